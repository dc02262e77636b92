//! The agent's local database on real disk: attempt records round-trip, the report queue keeps its
//! order and survives a reopen, an attempt is recorded only once, replicas of one attempt are separate
//! records in (job, attempt, replica) order, a database written before replicas existed still loads,
//! `held` names exactly the attempts (with their replicas) the coordinator must not mark lost, and a
//! forgotten attempt leaves a tombstone that still refuses a launch until it is dropped.

use std::path::PathBuf;

use agent::exec::{LogOptions, ProcessHandle};
use agent::jobs::{
    Assignment, AttemptKey, AttemptPhase, AttemptRecord, ExitSummary, JobStore, StopReason,
    StoredAttempt, Tombstone,
};
use protocol::pb;

/// Opens the store again after the previous handle was dropped. sled lets go of its file lock from a
/// background thread shortly after the drop, so a reopen in the same process waits for it (a new agent
/// process never does: the lock dies with the old one).
fn reopen(dir: &std::path::Path) -> JobStore {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match JobStore::open(dir) {
            Ok(store) => return store,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the store's lock was never released: {e}"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
}

fn assignment(job: &str, attempt: u32) -> Assignment {
    Assignment {
        job_id: job.into(),
        attempt,
        replica: 0,
        replicas: 0,
        replica_hosts: vec![],
        project_id: "proj".into(),
        command: "python".into(),
        args: vec!["train.py".into(), "--epochs=3".into()],
        env: [("SEED".to_string(), "7".to_string())].into(),
        working_dir: "/srv/work".into(),
        cpu_millis: 1500,
        memory_bytes: 1 << 30,
        gpu_uuids: vec!["GPU-aaaa".into()],
        timeout_ms: 60_000,
        cancel: false,
        cancel_grace_ms: 10_000,
        secret_env: Default::default(),
        launch_error: String::new(),
        network: String::new(),
        secrets_in_env: true,
    }
}

fn handle(job: &str, attempt: u32) -> ProcessHandle {
    ProcessHandle {
        job_id: job.into(),
        attempt,
        replica: 0,
        pid: 4242,
        pgid: 4242,
        start_time: 987_654,
        started_unix_ms: 1_700_000_000_000,
        state_dir: PathBuf::from(format!("/data/jobs/{job}/{attempt}")),
        log: LogOptions::new(format!("/data/jobs/{job}/{attempt}/logs")),
        cgroups: vec![],
        uid: Some(200_007),
    }
}

fn event(job: &str, attempt: u32, kind: pb::job_event::Kind) -> pb::JobEvent {
    pb::JobEvent {
        job_id: job.into(),
        attempt,
        replica: 0,
        at_ms: 1_700_000_000_123,
        kind: Some(kind),
    }
}

fn started(job: &str, attempt: u32) -> pb::JobEvent {
    event(
        job,
        attempt,
        pb::job_event::Kind::Started(pb::JobStarted { pid: 4242 }),
    )
}

fn exited(job: &str, attempt: u32, code: i32) -> pb::JobEvent {
    event(
        job,
        attempt,
        pb::job_event::Kind::Exited(pb::JobExited {
            exit_code: Some(code),
            wall_ms: 5,
            ..Default::default()
        }),
    )
}

fn key(job: &str, attempt: u32) -> AttemptKey {
    AttemptKey::new(job, attempt, 0)
}

/// Replica `index` of a gang of three.
fn replica(job: &str, attempt: u32, index: u32) -> Assignment {
    Assignment {
        replica: index,
        replicas: 3,
        replica_hosts: vec!["h0".into(), "h1".into(), "h2".into()],
        ..assignment(job, attempt)
    }
}

fn held_pairs(store: &JobStore) -> Vec<(String, u32)> {
    store
        .held()
        .expect("held")
        .into_iter()
        .map(|h| (h.job_id, h.attempt))
        .collect()
}

#[test]
fn attempt_records_round_trip_through_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut record = AttemptRecord::launching(assignment("job_a", 2));
    {
        let store = JobStore::open(dir.path()).expect("open");
        assert!(store.path().ends_with("agent.db"));
        assert!(store.begin_launch(&record).expect("begin"));
        record.phase = AttemptPhase::Running;
        record.handle = Some(handle("job_a", 2));
        record.stop = Some(StopReason::TimedOut);
        record.exit = Some(ExitSummary {
            exit_code: None,
            signal: Some(9),
            cancelled: false,
            timed_out: true,
            cpu_time_ms: Some(12),
            max_rss_bytes: None,
            wall_ms: 60_001,
            oom_killed: false,
        });
        store.save(&record).expect("save");
    }
    let store = reopen(dir.path());
    assert_eq!(
        store.attempt(&key("job_a", 2)).expect("read"),
        Some(record.clone())
    );
    assert_eq!(store.attempt(&key("job_a", 1)).expect("read"), None);
    assert_eq!(store.attempt(&key("job_", 2)).expect("read"), None);
    assert_eq!(store.attempts().expect("all"), vec![record.clone()]);
    assert_eq!(
        record.log_dir(),
        Some(std::path::Path::new("/data/jobs/job_a/2/logs"))
    );
}

#[test]
fn an_attempt_is_recorded_for_launch_only_once_even_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let record = AttemptRecord::launching(assignment("job_a", 1));
    {
        let store = JobStore::open(dir.path()).expect("open");
        assert!(store.begin_launch(&record).expect("first"));
        assert!(!store.begin_launch(&record).expect("second"));
    }
    let store = reopen(dir.path());
    assert!(!store.begin_launch(&record).expect("after restart"));
    // The next attempt of the same job is a new attempt.
    assert!(store
        .begin_launch(&AttemptRecord::launching(assignment("job_a", 2)))
        .expect("attempt 2"));
    let attempts: Vec<u32> = store
        .attempts()
        .expect("all")
        .iter()
        .map(AttemptRecord::attempt)
        .collect();
    assert_eq!(attempts, vec![1, 2]);
}

#[test]
fn the_queue_keeps_its_order_across_removal_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events: Vec<pb::JobEvent> = (0..10).map(|i| exited(&format!("j{i}"), 1, i)).collect();
    let seqs: Vec<u64> = {
        let store = JobStore::open(dir.path()).expect("open");
        events
            .iter()
            .map(|e| store.queue_event(e).expect("queue"))
            .collect()
    };
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    let store = reopen(dir.path());
    assert_eq!(store.pending_count(), 10);
    let first = store.pending_events(4).expect("batch");
    assert_eq!(
        first.iter().map(|q| q.event.clone()).collect::<Vec<_>>(),
        events[..4].to_vec()
    );
    assert_eq!(
        first.iter().map(|q| q.seq).collect::<Vec<_>>(),
        seqs[..4].to_vec()
    );
    store
        .remove_events(&first.iter().map(|q| q.seq).collect::<Vec<_>>())
        .expect("remove");
    // Events queued after a restart go behind the ones still waiting, never before.
    let late = exited("late", 1, 99);
    let late_seq = store.queue_event(&late).expect("queue late");
    assert!(late_seq > *seqs.last().expect("ten seqs"));
    drop(store);

    let store = reopen(dir.path());
    let rest = store.pending_events(100).expect("rest");
    let mut expected = events[4..].to_vec();
    expected.push(late);
    assert_eq!(
        rest.into_iter().map(|q| q.event).collect::<Vec<_>>(),
        expected
    );
}

#[test]
fn the_queue_continues_after_it_was_emptied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = JobStore::open(dir.path()).expect("open");
    let a = store.queue_event(&started("a", 1)).expect("a");
    store.remove_events(&[a]).expect("remove");
    assert_eq!(store.pending_count(), 0);
    let b = store.queue_event(&started("b", 1)).expect("b");
    assert!(b > a);
    // Removing what is not there is harmless.
    store.remove_events(&[a, 12345]).expect("remove again");
    assert_eq!(store.pending_count(), 1);
}

#[test]
fn an_end_and_its_report_are_written_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut record = AttemptRecord::launching(assignment("job_a", 1));
    {
        let store = JobStore::open(dir.path()).expect("open");
        store.begin_launch(&record).expect("begin");
        record.phase = AttemptPhase::Running;
        record.handle = Some(handle("job_a", 1));
        store
            .save_with_event(&record, &started("job_a", 1))
            .expect("started");
        record.phase = AttemptPhase::Finished;
        record.final_reported = true;
        store
            .save_with_event(&record, &exited("job_a", 1, 0))
            .expect("ended");
    }
    let store = reopen(dir.path());
    assert_eq!(store.attempt(&key("job_a", 1)).expect("read"), Some(record));
    let queued: Vec<pb::JobEvent> = store
        .pending_events(10)
        .expect("queue")
        .into_iter()
        .map(|q| q.event)
        .collect();
    assert_eq!(queued, vec![started("job_a", 1), exited("job_a", 1, 0)]);
}

#[test]
fn held_names_running_attempts_and_finished_ones_with_an_unsent_final_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = JobStore::open(dir.path()).expect("open");
    let save = |job: &str, phase: AttemptPhase| {
        let mut record = AttemptRecord::launching(assignment(job, 1));
        record.phase = phase;
        store.save(&record).expect("save");
    };
    save("launching", AttemptPhase::Launching);
    save("running", AttemptPhase::Running);
    save("done-sent", AttemptPhase::Finished);
    save("done-unsent", AttemptPhase::Finished);
    save("stale", AttemptPhase::Finished);
    save("failed-launch", AttemptPhase::Finished);
    store.queue_event(&started("running", 1)).expect("queue");
    let unsent = store
        .queue_event(&exited("done-unsent", 1, 0))
        .expect("queue");
    let failed = store
        .queue_event(&event(
            "failed-launch",
            1,
            pb::job_event::Kind::LaunchFailed("command not found".into()),
        ))
        .expect("queue");
    // A Started alone does not hold a finished attempt.
    store.queue_event(&started("stale", 1)).expect("queue");
    assert_eq!(
        held_pairs(&store),
        vec![
            ("done-unsent".to_string(), 1),
            ("failed-launch".to_string(), 1),
            ("launching".to_string(), 1),
            ("running".to_string(), 1),
        ]
    );
    // Once the coordinator answered for the final reports, the finished attempts are no longer held.
    store.remove_events(&[unsent, failed]).expect("remove");
    assert_eq!(
        held_pairs(&store),
        vec![("launching".to_string(), 1), ("running".to_string(), 1)]
    );
}

#[test]
fn a_garbage_record_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = sled::open(dir.path().join("agent.db")).expect("raw open");
        let tree = db.open_tree("attempts").expect("tree");
        let mut key = b"job".to_vec();
        key.push(0);
        key.extend_from_slice(&1u32.to_be_bytes());
        tree.insert(key, b"{not json".to_vec()).expect("insert");
        let reports = db.open_tree("reports").expect("tree");
        reports
            .insert(7u64.to_be_bytes(), vec![0xff, 0xff, 0xff])
            .expect("insert");
        db.flush().expect("flush");
    }
    let store = JobStore::open(dir.path()).expect("open");
    assert!(store.attempt(&key("job", 1)).is_err());
    assert!(store.attempts().is_err());
    assert!(store.pending_events(10).is_err());
    assert!(store.held().is_err());
    // The queue still numbers new events after the garbage one.
    let seq = store.queue_event(&started("x", 1)).expect("queue");
    assert!(seq > 7);
}

#[test]
fn replicas_of_one_attempt_are_separate_records_in_replica_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = JobStore::open(dir.path()).expect("open");
        // Inserted out of order, with neighbours that share prefixes of the job id and attempt.
        for (job, attempt, index) in [
            ("g", 1, 256),
            ("g", 1, 1),
            ("g", 2, 0),
            ("g", 1, 0),
            ("g-b", 1, 0),
            ("g", 1, 2),
            ("f", 1, 1),
        ] {
            let record = AttemptRecord::launching(replica(job, attempt, index));
            assert!(
                store.begin_launch(&record).expect("begin"),
                "{job} {attempt} {index}"
            );
        }
        // Each replica is its own guard: a sibling does not stand in for it, nor it for a sibling.
        assert!(!store
            .begin_launch(&AttemptRecord::launching(replica("g", 1, 1)))
            .expect("again"));
    }
    let store = reopen(dir.path());
    let order: Vec<AttemptKey> = store
        .attempts()
        .expect("all")
        .iter()
        .map(AttemptRecord::key)
        .collect();
    let expected = [
        ("f", 1, 1),
        ("g", 1, 0),
        ("g", 1, 1),
        ("g", 1, 2),
        ("g", 1, 256),
        ("g", 2, 0),
        ("g-b", 1, 0),
    ]
    .map(|(job, attempt, index)| AttemptKey::new(job, attempt, index));
    assert_eq!(order, expected);
    let one = store
        .attempt(&AttemptKey::new("g", 1, 1))
        .expect("read")
        .expect("replica 1");
    assert_eq!((one.replica(), one.assignment.replicas), (1, 3));
    assert_eq!(one.assignment.replica_hosts, vec!["h0", "h1", "h2"]);
    assert_eq!(
        store.attempt(&AttemptKey::new("g", 1, 3)).expect("read"),
        None
    );
    // Saving one replica leaves its siblings as they were.
    let mut running = one.clone();
    running.phase = AttemptPhase::Running;
    store.save(&running).expect("save");
    let zero = store
        .attempt(&AttemptKey::new("g", 1, 0))
        .expect("read")
        .expect("replica 0");
    assert_eq!(zero.phase, AttemptPhase::Launching);
    assert_eq!(zero.replica(), 0);
}

#[test]
fn a_record_written_before_replicas_existed_loads_as_replica_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut record = AttemptRecord::launching(assignment("old", 3));
    record.phase = AttemptPhase::Running;
    record.handle = Some(handle("old", 3));
    {
        // The earlier format: key `job NUL attempt_be`, and no replica fields (nor an end time) in
        // the JSON.
        let mut json = serde_json::to_value(&record).expect("json");
        json.as_object_mut()
            .expect("object")
            .remove("finished_at_ms");
        for field in ["assignment", "handle"] {
            let map = json[field].as_object_mut().expect("object");
            map.remove("replica");
            map.remove("replicas");
            map.remove("replica_hosts");
        }
        let db = sled::open(dir.path().join("agent.db")).expect("raw open");
        let tree = db.open_tree("attempts").expect("tree");
        let mut key = b"old".to_vec();
        key.push(0);
        key.extend_from_slice(&3u32.to_be_bytes());
        tree.insert(key, serde_json::to_vec(&json).expect("encode"))
            .expect("insert");
        db.flush().expect("flush");
    }
    let store = JobStore::open(dir.path()).expect("open");
    assert_eq!(
        store.attempt(&key("old", 3)).expect("read"),
        Some(record.clone())
    );
    assert_eq!(store.attempts().expect("all"), vec![record.clone()]);
    // It still guards against a second launch, and is held as replica 0.
    assert!(!store
        .begin_launch(&AttemptRecord::launching(assignment("old", 3)))
        .expect("begin"));
    let held = store.held().expect("held");
    assert_eq!(
        held,
        vec![pb::HeldAttempt {
            job_id: "old".into(),
            attempt: 3,
            replica: 0
        }]
    );
    // A new replica of that attempt is a new record beside it.
    assert!(store
        .begin_launch(&AttemptRecord::launching(replica("old", 3, 1)))
        .expect("begin replica 1"));
    assert_eq!(store.attempts().expect("all").len(), 2);
}

#[test]
fn held_attempts_carry_their_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = JobStore::open(dir.path()).expect("open");
    for index in [2, 0] {
        let mut record = AttemptRecord::launching(replica("g", 1, index));
        record.phase = AttemptPhase::Running;
        store.save(&record).expect("save");
    }
    let mut done = AttemptRecord::launching(replica("g", 1, 1));
    done.phase = AttemptPhase::Finished;
    done.final_reported = true;
    let final_event = pb::JobEvent {
        replica: 1,
        ..exited("g", 1, 0)
    };
    store.save_with_event(&done, &final_event).expect("save");
    // Replica 1 of attempt 2 has only a final report left (its record is finished too).
    let later = pb::JobEvent {
        replica: 1,
        ..exited("g", 2, 0)
    };
    store.queue_event(&later).expect("queue");
    let held: Vec<(String, u32, u32)> = store
        .held()
        .expect("held")
        .into_iter()
        .map(|h| (h.job_id, h.attempt, h.replica))
        .collect();
    assert_eq!(
        held,
        vec![
            ("g".to_string(), 1, 0),
            ("g".to_string(), 1, 1),
            ("g".to_string(), 1, 2),
            ("g".to_string(), 2, 1),
        ]
    );
}

#[test]
fn a_forgotten_attempt_leaves_a_tombstone_that_refuses_a_launch_until_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gang_key = AttemptKey::new("g", 2, 1);
    let done_tombstone = Tombstone {
        key: key("done", 1),
        forgotten_at_ms: 5_000,
        final_reported: true,
    };
    let gang_tombstone = Tombstone {
        key: gang_key.clone(),
        forgotten_at_ms: 5_000,
        final_reported: false,
    };
    {
        let store = JobStore::open(dir.path()).expect("open");
        let mut done = AttemptRecord::launching(assignment("done", 1));
        done.handle = Some(handle("done", 1));
        done.mark_finished(1_000);
        done.mark_finished(1_500);
        assert_eq!(done.finished_at_ms, Some(1_000), "the first end time stays");
        done.final_reported = true;
        store.save(&done).expect("save");
        // Stopped as stale: finished, its end never reported.
        let mut gang = AttemptRecord::launching(replica("g", 2, 1));
        gang.mark_finished(2_000);
        store.save(&gang).expect("save");
        let mut running = AttemptRecord::launching(assignment("run", 1));
        running.phase = AttemptPhase::Running;
        store.save(&running).expect("save");
        store.queue_event(&started("queued", 4)).expect("queue");

        let forgotten = store
            .forget(
                &[
                    key("done", 1),
                    gang_key.clone(),
                    key("run", 1),
                    key("nothing", 1),
                ],
                5_000,
            )
            .expect("forget");
        assert_eq!(
            forgotten,
            vec![done_tombstone.clone(), gang_tombstone.clone()],
            "only finished records are forgotten"
        );
        assert!(store
            .forget(&[key("done", 1)], 6_000)
            .expect("again")
            .is_empty());
    }

    let store = reopen(dir.path());
    assert_eq!(store.attempt(&key("done", 1)).expect("read"), None);
    assert_eq!(
        store.lookup(&key("done", 1)).expect("lookup"),
        Some(StoredAttempt::Forgotten(done_tombstone.clone()))
    );
    let live: Vec<AttemptKey> = store
        .attempts()
        .expect("all")
        .iter()
        .map(AttemptRecord::key)
        .collect();
    assert_eq!(live, vec![key("run", 1)]);
    assert_eq!(
        store.tombstones().expect("tombstones"),
        vec![done_tombstone.clone(), gang_tombstone.clone()]
    );
    for again in [assignment("done", 1), replica("g", 2, 1)] {
        assert!(!store
            .begin_launch(&AttemptRecord::launching(again))
            .expect("begin"));
    }
    assert_eq!(held_pairs(&store), vec![("run".to_string(), 1)]);
    assert_eq!(
        store.queued_keys().expect("queued"),
        [key("queued", 4)].into_iter().collect()
    );

    // The end of the stale replica reported late: the tombstone says so, the report is queued.
    let reported = Tombstone {
        final_reported: true,
        ..gang_tombstone
    };
    let vanished = pb::JobEvent {
        replica: 1,
        ..event("g", 2, pb::job_event::Kind::Vanished("gone".into()))
    };
    store
        .save_tombstone_with_event(&reported, &vanished)
        .expect("report");
    assert_eq!(
        store.lookup(&gang_key).expect("lookup"),
        Some(StoredAttempt::Forgotten(reported))
    );
    assert!(store.queued_keys().expect("queued").contains(&gang_key));

    // Dropping removes tombstones only; the key is unknown afterwards.
    assert_eq!(
        store
            .drop_tombstones(&[key("done", 1), key("run", 1), key("nothing", 1)])
            .expect("drop"),
        1
    );
    assert_eq!(store.lookup(&key("done", 1)).expect("lookup"), None);
    assert!(store.attempt(&key("run", 1)).expect("read").is_some());
    assert!(store
        .begin_launch(&AttemptRecord::launching(assignment("done", 1)))
        .expect("begin"));
}
