//! Dovecot restarted under a running reader (`tests/mail-servers.sh restart-imap`): the reader
//! reconnects by itself and every message is recorded exactly once — nothing lost, nothing
//! recorded twice. Its own test binary, because restarting Dovecot disturbs every IMAP user.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use carebridge_contract::{Receipt, RecordId, SourceKey, Submission};
use common::{MailServers, assert_no_phi, capture_logs, config, message, start_inbound, tag};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What the stand-in router saw: records by dedup key, like the real router's store.
#[derive(Default)]
struct Store {
    by_source: HashMap<SourceKey, (RecordId, String)>,
    duplicates: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dovecot_restart_mid_run_loses_and_duplicates_nothing() {
    let Some(env) = common::mail_env() else { return };
    capture_logs();
    let user = "box5@clinic.test";
    env.empty_mailbox(user).await;
    let cfg = config(&format!(
        "address = \"{user}\"\n[imap]\nhost = \"{}\"\nport = {}\ntls = \"implicit\"\ntls_name = \"{}\"\n\
         ca_file = \"{}\"\nusername = \"{user}\"\npassword_file = \"{user}.pass\"\nreconnect_max_secs = 2\n",
        env.host,
        env.imaps_port,
        env.tls_name,
        env.ca.display()
    ));
    let common::Running { mut router, shutdown, task, .. } = start_inbound(&env, "email.box5", &cfg);

    // The router: records new keys, answers Duplicate for known ones (as the real one does).
    let store = Arc::new(Mutex::new(Store::default()));
    let router_store = store.clone();
    // The first submission of a "held" message goes to the test instead of being answered.
    let (hold_tx, mut hold_rx) = tokio::sync::mpsc::channel(1);
    let answering = tokio::spawn(async move {
        let mut next_id = 100u64;
        loop {
            let req = router.expect_request("any submission").await;
            let Submission::Message(e) = &req.submission else { panic!("unexpected malformed submission") };
            let mid = e.native_message_id.clone().unwrap_or_default();
            if mid.starts_with("held-") && !router_store.lock().unwrap().by_source.contains_key(&e.source) {
                hold_tx.send(req).await.unwrap();
                continue;
            }
            let receipt = {
                let mut s = router_store.lock().unwrap();
                match s.by_source.get(&e.source).map(|(id, _)| *id) {
                    Some(id) => {
                        s.duplicates += 1;
                        Receipt::Duplicate(id)
                    }
                    None => {
                        let id = RecordId(next_id);
                        next_id += 1;
                        s.by_source.insert(e.source.clone(), (id, mid));
                        Receipt::Recorded(id)
                    }
                }
            };
            let _ = req.reply.send(receipt);
        }
    });

    let send = |id: String| {
        let env = env.clone();
        async move {
            env.smtp_send_raw(
                "ann@patients.test",
                &[user],
                &message("ann@patients.test", user, &id, "x", "", "restart body"),
            )
            .await
        }
    };
    let mut ids = Vec::new();
    for n in 0..3 {
        let id = tag(&format!("before-{n}"));
        send(id.clone()).await;
        ids.push(id);
    }
    let recorded = |want: usize| {
        let store = store.clone();
        async move { store.lock().unwrap().by_source.len() >= want }
    };
    env.wait_for("3 messages recorded before the restart", || recorded(3)).await;

    // A message is in hand (recorded, not yet acknowledged) when Dovecot restarts: the ack
    // fails with the connection, the message is fetched again and answered Duplicate.
    let held = tag("held");
    send(held.clone()).await;
    ids.push(held.clone());
    let held_req = tokio::time::timeout(common::WAIT, hold_rx.recv()).await.expect("held message submitted").unwrap();

    // Restart Dovecot; mail sent meanwhile waits in Postfix's queue.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/mail-servers.sh");
    let dir = env.dir.clone();
    let restart = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash").arg(script).arg("restart-imap").arg(dir).status()
    });
    for n in 0..2 {
        let id = tag(&format!("during-{n}"));
        send(id.clone()).await;
        ids.push(id);
    }
    let status = restart.await.unwrap().expect("run mail-servers.sh");
    assert!(status.success(), "restart-imap failed");
    {
        let Submission::Message(e) = &held_req.submission else { unreachable!() };
        store.lock().unwrap().by_source.insert(e.source.clone(), (RecordId(1), held.clone()));
    }
    held_req.reply.send(Receipt::Recorded(RecordId(1))).unwrap();
    for n in 0..2 {
        let id = tag(&format!("after-{n}"));
        send(id.clone()).await;
        ids.push(id);
    }

    env.wait_for("all 8 messages recorded", || recorded(8)).await;
    env.wait_for("all 8 messages acknowledged", || async { env.search(user, "INBOX", "UNSEEN").await.is_empty() })
        .await;
    {
        let s = store.lock().unwrap();
        let mut recorded_ids: Vec<String> = s.by_source.values().map(|(_, mid)| mid.clone()).collect();
        recorded_ids.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(recorded_ids, want, "each message recorded exactly once, none missing");
        assert!(s.duplicates >= 1, "the held message came back after the lost ack");
    }
    answering.abort();
    shutdown.cancel();
    let stopped = tokio::time::timeout(common::WAIT, task).await.expect("stops after shutdown");
    stopped.expect("no panic").expect("clean stop");

    let logs = common::captured_logs();
    assert!(logs.contains("reconnecting"), "the drop is logged:\n{logs}");
    assert!(logs.matches("IMAP connected. account=email.box5").count() >= 2, "reconnected:\n{logs}");
    assert_no_phi(&["restart body"]);
}
