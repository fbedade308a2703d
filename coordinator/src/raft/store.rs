//! The node's durable Raft state in one `redb` database (`<state dir>/raft.redb`): the vote, the log, the purged
//! and committed log ids, the applied [`JobState`] with its membership, and the last snapshot.
//!
//! redb commits are durable (fsync) and atomic, so a `kill -9` at any point leaves either the old or the new value
//! of every table. The state machine is persisted on every apply (the job's state is a few kilobytes and changes a
//! few times a minute), so a restarted node starts from its last applied entry and Raft replays only the rest.
//! redb's calls block; they are short (one small transaction), so they run on the Raft task directly.

use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{NodeId, PeerNode, TypeConfig};
use crate::state::JobState;

/// Log entries by index, each serde_json of an openraft `Entry`.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Small named values (vote, purged and committed log ids, the node's and the job's identity), serde_json.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The applied state and the last snapshot, serde_json.
const MACHINE: TableDefinition<&str, &[u8]> = TableDefinition::new("machine");

const VOTE: &str = "vote";
const PURGED: &str = "last_purged";
const COMMITTED: &str = "committed";
const NODE_ID: &str = "node_id";
const JOB: &str = "job";
const APPLIED: &str = "applied";
const SNAPSHOT: &str = "snapshot";

/// Why a state dir cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the Raft state dir {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot open the Raft state in {path}: {source} (another coordinator may hold it; each node needs its own \
         --state-dir)"
    )]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("cannot read or write the Raft state in {path}: {source}")]
    Io { path: PathBuf, source: redb::Error },
    #[error(
        "the Raft state dir {path} belongs to another job: it records `{found}`, this coordinator runs `{expected}`; \
         give this job its own --state-dir, or remove the directory to start this node empty"
    )]
    OtherJob {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error(
        "the Raft state dir {path} belongs to node {found}, not to --node-id {expected}: give each node its own \
         --state-dir"
    )]
    OtherNode {
        path: PathBuf,
        found: NodeId,
        expected: NodeId,
    },
    #[error("the Raft state in {path} is damaged: key `{key}`: {source}")]
    Corrupt {
        path: PathBuf,
        key: String,
        source: serde_json::Error,
    },
}

/// The state machine's durable value: everything applied up to `last_applied`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Applied {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, PeerNode>,
    pub state: JobState,
}

/// A snapshot as stored: its metadata and the serde_json of the [`Applied`] it holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, PeerNode>,
    data: Vec<u8>,
}

/// Opens (creating if needed) the state of node `node_id` for the job `job` in `dir`, and checks both identities.
pub fn open(dir: &Path, node_id: NodeId, job: &str) -> Result<(LogStore, StateMachineStore), StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    let path = dir.join("raft.redb");
    let db = Database::create(&path).map_err(|source| StoreError::Open {
        path: path.clone(),
        source,
    })?;
    let io = |source: redb::Error| StoreError::Io {
        path: path.clone(),
        source,
    };
    let tx = db.begin_write().map_err(|e| io(e.into()))?;
    {
        let _ = tx.open_table(LOG).map_err(|e| io(e.into()))?;
        let _ = tx.open_table(MACHINE).map_err(|e| io(e.into()))?;
        let mut meta = tx.open_table(META).map_err(|e| io(e.into()))?;
        let found_node = meta.get(NODE_ID).map_err(|e| io(e.into()))?.map(|v| v.value().to_vec());
        match found_node {
            Some(v) => {
                let found: NodeId = decode(&path, NODE_ID, &v)?;
                if found != node_id {
                    return Err(StoreError::OtherNode {
                        path: dir.to_owned(),
                        found,
                        expected: node_id,
                    });
                }
            }
            None => {
                meta.insert(NODE_ID, encode(&node_id).as_slice())
                    .map_err(|e| io(e.into()))?;
            }
        }
        let found_job = meta.get(JOB).map_err(|e| io(e.into()))?.map(|v| v.value().to_vec());
        match found_job {
            Some(v) => {
                let found: String = decode(&path, JOB, &v)?;
                if found != job {
                    return Err(StoreError::OtherJob {
                        path: dir.to_owned(),
                        found,
                        expected: job.to_owned(),
                    });
                }
            }
            None => {
                meta.insert(JOB, encode(&job).as_slice()).map_err(|e| io(e.into()))?;
            }
        }
    }
    tx.commit().map_err(|e| io(e.into()))?;

    let db = Arc::new(db);
    let applied = read_key(&db, MACHINE, APPLIED)
        .map_err(|e| io(e))?
        .map(|b| decode::<Applied>(&path, APPLIED, &b))
        .transpose()?
        .unwrap_or_default();
    let committed = read_key(&db, META, COMMITTED)
        .map_err(|e| io(e))?
        .map(|b| decode::<Option<LogId<NodeId>>>(&path, COMMITTED, &b))
        .transpose()?
        .flatten();
    let commit_index = Arc::new(AtomicU64::new(committed.map_or(0, |c| c.index)));
    Ok((
        LogStore {
            db: db.clone(),
            commit_index: commit_index.clone(),
        },
        StateMachineStore {
            db,
            applied: Arc::new(RwLock::new(applied)),
        },
    ))
}

fn encode<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("Raft state values serialize to JSON")
}

fn decode<T: for<'de> Deserialize<'de>>(path: &Path, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        path: path.to_owned(),
        key: key.to_owned(),
        source,
    })
}

/// The raw bytes under `key` of a string-keyed table.
fn read_key(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<Vec<u8>>, redb::Error> {
    let tx = db.begin_read()?;
    let t = tx.open_table(table)?;
    Ok(t.get(key)?.map(|v| v.value().to_vec()))
}

fn write_keys(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    kv: &[(&str, Vec<u8>)],
) -> Result<(), redb::Error> {
    let tx = db.begin_write()?;
    {
        let mut t = tx.open_table(table)?;
        for (k, v) in kv {
            t.insert(*k, v.as_slice())?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn read_err(e: impl Into<redb::Error>) -> StorageError<NodeId> {
    StorageIOError::read(&e.into()).into()
}
fn write_err(e: impl Into<redb::Error>) -> StorageError<NodeId> {
    StorageIOError::write(&e.into()).into()
}
fn json_read_err(e: serde_json::Error) -> StorageError<NodeId> {
    StorageIOError::read(&e).into()
}

/// The log, the vote and the log pointers ([`RaftLogStorage`]); clones share the database and serve as the
/// replication tasks' log readers.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    commit_index: Arc<AtomicU64>,
}

impl LogStore {
    /// The highest log index this node knows to be committed (saved by Raft as it learns of it).
    pub fn commit_index(&self) -> Arc<AtomicU64> {
        self.commit_index.clone()
    }

    fn meta<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, StorageError<NodeId>> {
        read_key(&self.db, META, key)
            .map_err(read_err)?
            .map(|b| serde_json::from_slice(&b).map_err(json_read_err))
            .transpose()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => Some(e + 1),
            Bound::Excluded(&e) => Some(e),
            Bound::Unbounded => None,
        };
        let tx = self.db.begin_read().map_err(read_err)?;
        let t = tx.open_table(LOG).map_err(read_err)?;
        let iter = match end {
            Some(end) if end <= start => return Ok(Vec::new()),
            Some(end) => t.range(start..end),
            None => t.range(start..),
        }
        .map_err(read_err)?;
        let mut out = Vec::new();
        for item in iter {
            let (_, v) = item.map_err(read_err)?;
            out.push(serde_json::from_slice(v.value()).map_err(json_read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.meta(PURGED)?.flatten();
        let tx = self.db.begin_read().map_err(read_err)?;
        let t = tx.open_table(LOG).map_err(read_err)?;
        let last = match t.last().map_err(read_err)? {
            Some((_, v)) => {
                let e: Entry<TypeConfig> = serde_json::from_slice(v.value()).map_err(json_read_err)?;
                Some(e.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        write_keys(&self.db, META, &[(VOTE, encode(vote))])
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        write_keys(&self.db, META, &[(COMMITTED, encode(&committed))]).map_err(write_err)?;
        if let Some(c) = committed {
            self.commit_index.fetch_max(c.index, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.meta(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let tx = self.db.begin_write().map_err(write_err)?;
        {
            let mut t = tx.open_table(LOG).map_err(write_err)?;
            for e in entries {
                t.insert(e.log_id.index, encode(&e).as_slice())
                    .map_err(|err| StorageIOError::write_log_entry(e.log_id, &redb::Error::from(err)))?;
            }
        }
        // The commit is durable when it returns, so the entries are flushed when the callback runs.
        tx.commit().map_err(write_err)?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let tx = self.db.begin_write().map_err(write_err)?;
        {
            let mut t = tx.open_table(LOG).map_err(write_err)?;
            t.retain_in(log_id.index.., |_, _| false).map_err(write_err)?;
        }
        tx.commit().map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let tx = self.db.begin_write().map_err(write_err)?;
        {
            let mut meta = tx.open_table(META).map_err(write_err)?;
            meta.insert(PURGED, encode(&Some(log_id)).as_slice()).map_err(write_err)?;
            let mut t = tx.open_table(LOG).map_err(write_err)?;
            t.retain_in(..=log_id.index, |_, _| false).map_err(write_err)?;
        }
        tx.commit().map_err(write_err)
    }
}

/// The applied [`JobState`] and snapshots ([`RaftStateMachine`]); clones share the database and the in-memory
/// copy, and serve as the snapshot builder.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<Database>,
    applied: Arc<RwLock<Applied>>,
}

impl StateMachineStore {
    /// The in-memory copy of the applied state, shared with readers.
    pub fn applied(&self) -> Arc<RwLock<Applied>> {
        self.applied.clone()
    }

    fn current(&self) -> Applied {
        self.applied.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, next: Applied) {
        *self.applied.write().unwrap_or_else(|p| p.into_inner()) = next;
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let applied = self.current();
        let data = encode(&applied);
        let snapshot_id = match &applied.last_applied {
            Some(l) => format!("{}-{}", l.leader_id, l.index),
            None => "empty".to_owned(),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        write_keys(&self.db, MACHINE, &[(SNAPSHOT, encode(&stored))])
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, PeerNode>), StorageError<NodeId>> {
        let a = self.applied.read().unwrap_or_else(|p| p.into_inner());
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Applied to a copy, persisted, then published: a failed write leaves memory equal to disk.
        let mut next = self.current();
        let mut replies = Vec::new();
        for e in entries {
            next.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(cmd) => next.state.apply(&cmd),
                EntryPayload::Membership(m) => next.membership = StoredMembership::new(Some(e.log_id), m),
            }
            replies.push(());
        }
        write_keys(&self.db, MACHINE, &[(APPLIED, encode(&next))])
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        self.replace(next);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, PeerNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let mut next: Applied = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        next.last_applied = meta.last_log_id;
        next.membership = meta.last_membership.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        write_keys(
            &self.db,
            MACHINE,
            &[(APPLIED, encode(&next)), (SNAPSHOT, encode(&stored))],
        )
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.replace(next);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let Some(b) = read_key(&self.db, MACHINE, SNAPSHOT).map_err(read_err)? else {
            return Ok(None);
        };
        let s: StoredSnapshot = serde_json::from_slice(&b).map_err(json_read_err)?;
        Ok(Some(Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use proptest::collection::vec;
    use proptest::prelude::*;
    use splade_proto::domain::{CheckpointRef, WorkerId};

    use super::*;
    use crate::state::{GenerationRecord, JobCommand, JobPhase, JobRecord, WorkerRecord};

    const JOB: &str = "output_dir=/tmp/job config_sha256=abc";

    fn worker_id() -> impl Strategy<Value = WorkerId> {
        (0u8..4).prop_map(|i| WorkerId::new(format!("w{i}")).unwrap())
    }

    fn checkpoint() -> impl Strategy<Value = CheckpointRef> {
        (0u64..12).prop_map(|i| CheckpointRef {
            step: i * 10,
            location: format!("s3://b/run/checkpoint-{}", i * 10),
            manifest_sha256: format!("{i:064x}"),
        })
    }

    fn phase() -> impl Strategy<Value = JobPhase> {
        prop_oneof![
            "[a-z]{0,4}".prop_map(|reason| JobPhase::Rendezvous { reason }),
            Just(JobPhase::Running),
            (0u64..200).prop_map(|final_step| JobPhase::Completed { final_step }),
            "[a-z]{0,4}".prop_map(|reason| JobPhase::Failed { reason }),
        ]
    }

    fn leaf() -> impl Strategy<Value = JobCommand> {
        prop_oneof![
            (worker_id(), proptest::option::of(any::<u16>()), 0u64..8).prop_map(|(id, store_port, join_seq)| {
                JobCommand::PutWorker(WorkerRecord {
                    id,
                    advertise_host: "10.0.0.1".into(),
                    store_port,
                    device: "cpu".into(),
                    join_seq,
                })
            }),
            worker_id().prop_map(JobCommand::RemoveWorker),
            (1u64..6, vec(worker_id(), 1..4), proptest::option::of(checkpoint()), 1u32..3).prop_map(
                |(number, members, restore, micro_batches_per_rank)| {
                    JobCommand::StartGeneration(GenerationRecord {
                        number,
                        members,
                        store_host: "10.0.0.1".into(),
                        store_port: 29500,
                        start_step: restore.as_ref().map_or(0, |c| c.step),
                        restore,
                        micro_batches_per_rank,
                        ended: None,
                    })
                }
            ),
            "[a-z]{0,4}".prop_map(|reason| JobCommand::EndGeneration { reason }),
            Just(JobCommand::CountRestart),
            checkpoint().prop_map(JobCommand::RecordCheckpoint),
            phase().prop_map(JobCommand::SetPhase),
            (1u64..200).prop_map(|total_steps| JobCommand::SetJob(JobRecord {
                config_sha256: "abc".into(),
                global_batch_size: 8,
                per_device_batch_size: 4,
                total_steps,
                data_plan: None,
            })),
        ]
    }

    fn command() -> impl Strategy<Value = JobCommand> {
        prop_oneof![8 => leaf(), 1 => vec(leaf(), 0..4).prop_map(JobCommand::Batch)]
    }

    /// The log of `cmds` as a leader of term 1 writes it: a blank entry at index 1, then one entry per command.
    fn entries(cmds: &[JobCommand]) -> Vec<Entry<TypeConfig>> {
        let id = |index| LogId::new(CommittedLeaderId::new(1, 1), index);
        std::iter::once(Entry {
            log_id: id(1),
            payload: EntryPayload::Blank,
        })
        .chain(cmds.iter().enumerate().map(|(i, c)| Entry {
            log_id: id(i as u64 + 2),
            payload: EntryPayload::Normal(c.clone()),
        }))
        .collect()
    }

    fn state_of(sm: &StateMachineStore) -> JobState {
        sm.current().state
    }

    async fn check(cmds: Vec<JobCommand>, cut: usize) {
        let mut direct = JobState::default();
        cmds.iter().for_each(|c| direct.apply(c));
        let all = entries(&cmds);
        let cut = cut.min(all.len());
        let root = tempfile::tempdir().unwrap();

        // Node A: the log is written, a prefix applied, a snapshot built, the rest applied.
        let (mut log, mut sm) = open(&root.path().join("a"), 1, JOB).unwrap();
        log.blocking_append(all.clone()).await.unwrap();
        sm.apply(all[..cut].to_vec()).await.unwrap();
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        sm.apply(all[cut..].to_vec()).await.unwrap();
        assert_eq!(state_of(&sm), direct, "applying the log in two parts");
        drop((log, sm));

        // Replaying the log as read back from disk, from nothing.
        let (mut log, sm_a) = open(&root.path().join("a"), 1, JOB).unwrap();
        assert_eq!(state_of(&sm_a), direct, "the applied state reopened from disk");
        let from_disk = log.try_get_log_entries(..).await.unwrap();
        assert_eq!(from_disk.len(), all.len());
        let (_, mut sm_c) = open(&root.path().join("c"), 3, JOB).unwrap();
        sm_c.apply(from_disk.clone()).await.unwrap();
        assert_eq!(state_of(&sm_c), direct, "replaying the whole log");

        // Restoring the snapshot on another node and replaying the log after it.
        let (_, mut sm_b) = open(&root.path().join("b"), 2, JOB).unwrap();
        let Snapshot { meta, snapshot } = snapshot;
        sm_b.install_snapshot(&meta, snapshot).await.unwrap();
        let rest = log.try_get_log_entries(cut as u64 + 1..).await.unwrap();
        sm_b.apply(rest).await.unwrap();
        assert_eq!(state_of(&sm_b), direct, "the snapshot after {cut} entries and the rest of the log");
        drop(sm_b);
        let (_, sm_b) = open(&root.path().join("b"), 2, JOB).unwrap();
        assert_eq!(state_of(&sm_b), direct, "node B reopened from disk");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
        #[test]
        fn replaying_the_log_or_a_snapshot_and_the_rest_gives_the_directly_applied_state(
            cmds in vec(command(), 0..30),
            cut in 0usize..32,
        ) {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(check(cmds, cut));
        }
    }

    #[tokio::test]
    async fn purge_and_truncate_keep_the_log_consecutive_across_a_reopen() {
        let root = tempfile::tempdir().unwrap();
        let cmds: Vec<_> = (0..9).map(|_| JobCommand::CountRestart).collect();
        let all = entries(&cmds); // indexes 1..=10
        let (mut log, _) = open(root.path(), 1, JOB).unwrap();
        log.blocking_append(all.clone()).await.unwrap();
        log.purge(all[3].log_id).await.unwrap(); // drops 1..=4
        log.truncate(all[8].log_id).await.unwrap(); // drops 9..=10
        drop(log);
        let (mut log, _) = open(root.path(), 1, JOB).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(all[3].log_id));
        assert_eq!(state.last_log_id, Some(all[7].log_id));
        let left: Vec<u64> = log.try_get_log_entries(..).await.unwrap().iter().map(|e| e.log_id.index).collect();
        assert_eq!(left, vec![5, 6, 7, 8]);
    }
}
