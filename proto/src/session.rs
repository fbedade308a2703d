//! A worker's membership in the job: join, then heartbeat in the background and publish what to do.
//!
//! The training loop reads [`WorkerSession::directive`] between steps and tells the session where it is with
//! [`WorkerSession::set_position`]; the session re-joins on its own when the coordinator has forgotten the worker,
//! and turns an unreachable coordinator into [`Directive::Failed`] once `give_up_after` has passed (until then
//! [`WorkerSession::unreachable_for`] says how long it has been silent, for callers with their own bound).
//!
//! Every answer carries the Raft term of the coordinator that gave it. The session remembers the highest term it
//! has seen and never obeys a directive of an older one (a deposed leader's); each directive it obeys is logged
//! with its term and generation (`directive obeyed`, debug for "keep going", info otherwise).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{ClientError, ClientTls, CoordinatorClient, RetryPolicy, LEADER_METADATA};
use crate::domain::{Directive, Heartbeat, HeartbeatReply, JoinAck, JoinRequest, WorkerId};

#[derive(Clone, Copy, Default)]
struct Position {
    generation: Option<u64>,
    step: u64,
}

/// A joined worker with a background heartbeat. Dropping it stops the heartbeat (the coordinator then drops the
/// worker after its heartbeat timeout); [`WorkerSession::leave`] says goodbye properly.
pub struct WorkerSession {
    ack: JoinAck,
    /// The coordinator the session talks to; replaced when a non-leader redirects the heartbeat.
    client: Arc<Mutex<CoordinatorClient>>,
    position: Arc<Mutex<Position>>,
    directive: watch::Receiver<Directive>,
    /// When the coordinator stopped answering; `None` while it answers.
    silent_since: Arc<Mutex<Option<Instant>>>,
    task: JoinHandle<()>,
}

impl WorkerSession {
    /// Joins and starts heartbeating. `give_up_after` bounds how long the coordinator may be unreachable before
    /// the session reports [`Directive::Failed`] (and stops).
    pub async fn join(
        client: CoordinatorClient,
        request: JoinRequest,
        give_up_after: Duration,
    ) -> Result<Self, ClientError> {
        Self::join_following(client, request, give_up_after, None).await
    }

    /// [`Self::join`]; with `redirect` (the token and TLS to connect with), a heartbeat refused by a non-leader
    /// that names the leader moves the session to the leader.
    async fn join_following(
        mut client: CoordinatorClient,
        request: JoinRequest,
        give_up_after: Duration,
        redirect: Option<Redirect>,
    ) -> Result<Self, ClientError> {
        let ack = client.join(request.clone()).await?;
        let client = Arc::new(Mutex::new(client));
        let position = Arc::new(Mutex::new(Position::default()));
        let (tx, directive) = watch::channel(Directive::Wait {
            reason: "joined; waiting for the first heartbeat".into(),
        });
        let silent_since = Arc::new(Mutex::new(None));
        let task = tokio::spawn(heartbeat_loop(
            Link { current: client.clone(), redirect },
            request,
            ack.clone(),
            position.clone(),
            tx,
            silent_since.clone(),
            give_up_after,
        ));
        Ok(Self {
            ack,
            client,
            position,
            directive,
            silent_since,
            task,
        })
    }

    /// Joins through the first coordinator of `addrs` that accepts the join, following redirects: a coordinator
    /// that is not the leader answers `UNAVAILABLE` with the leader's address in [`LEADER_METADATA`], and the join
    /// goes there next. Addresses that do not answer are skipped; the list is tried `retry.attempts` rounds, the
    /// pause between rounds growing as `retry` says. A refusal retrying cannot fix (wrong token, job over) ends it
    /// at once. Returns the session and the address that accepted.
    pub async fn join_any(
        addrs: &[String],
        token: &str,
        tls: Option<ClientTls>,
        request: JoinRequest,
        retry: RetryPolicy,
        give_up_after: Duration,
    ) -> Result<(Self, String), ClientError> {
        let once = RetryPolicy { attempts: 1, ..retry.clone() };
        let mut backoff = retry.initial_backoff;
        let mut last = None;
        for round in 1..=retry.attempts.max(1) {
            let mut queue: std::collections::VecDeque<String> = addrs.iter().cloned().collect();
            let mut redirects = 0;
            while let Some(addr) = queue.pop_front() {
                let client = match CoordinatorClient::connect_with(&addr, token, tls.clone(), once.clone()).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(addr, round, error = %e, "coordinator not reachable; trying the next");
                        last = Some(e);
                        continue;
                    }
                };
                let redirect = Redirect { token: token.to_owned(), tls: tls.clone() };
                match Self::join_following(client, request.clone(), give_up_after, Some(redirect)).await {
                    Ok(session) => return Ok((session, addr)),
                    Err(e) => match leader_of(&e) {
                        // Bounded, so two coordinators naming each other cannot loop.
                        Some(leader) if redirects < 2 * addrs.len() + 2 => {
                            tracing::info!(from = addr, to = leader, "not the leader; following the redirect");
                            redirects += 1;
                            queue.push_front(leader);
                            last = Some(e);
                        }
                        _ if e.code() == Some(tonic::Code::Unavailable) => {
                            tracing::warn!(addr, round, error = %e, "coordinator cannot take the join now; trying the next");
                            last = Some(e);
                        }
                        _ => return Err(e),
                    },
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(retry.max_backoff);
        }
        Err(last.unwrap_or_else(|| ClientError::InvalidAddress {
            addr: String::new(),
            reason: "no coordinator address given".into(),
        }))
    }

    /// This worker's id and heartbeat timing as the coordinator confirmed them.
    pub fn ack(&self) -> &JoinAck {
        &self.ack
    }

    pub fn worker_id(&self) -> &WorkerId {
        &self.ack.worker_id
    }

    /// The latest directive other than "keep going": `Wait`, `Assign`, `Complete` or `Failed` (never `KeepGoing`
    /// or `Rejoin`). Use `changed()` on it to wait for the next one.
    pub fn directive(&self) -> watch::Receiver<Directive> {
        self.directive.clone()
    }

    /// Where training is: the generation it runs in (`None` when idle) and the last finished step. Sent with the
    /// next heartbeat; a generation different from the coordinator's makes it send the assignment again.
    pub fn set_position(&self, generation: Option<u64>, step: u64) {
        *self.position.lock().unwrap_or_else(|e| e.into_inner()) = Position { generation, step };
    }

    /// A handle that sets this session's position from another task or thread (same effect as
    /// [`WorkerSession::set_position`]).
    pub fn position_setter(&self) -> PositionSetter {
        PositionSetter(self.position.clone())
    }

    /// A client on the session's current connection (the leader it was last redirected to), for progress
    /// reports and checkpoint commits; take a fresh one for each call that should follow a redirect.
    pub fn client(&self) -> CoordinatorClient {
        self.client.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How long the coordinator has not answered (a failed heartbeat, or only directives of an older term);
    /// `None` while it answers.
    pub fn unreachable_for(&self) -> Option<Duration> {
        self.silent_since.lock().unwrap_or_else(|e| e.into_inner()).map(|t| t.elapsed())
    }

    /// True once the heartbeat has stopped (job over, or coordinator lost).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops heartbeating and tells the coordinator this worker is leaving.
    pub async fn leave(self, reason: &str) -> Result<(), ClientError> {
        self.task.abort();
        let req = crate::domain::LeaveRequest {
            worker_id: self.ack.worker_id.clone(),
            reason: reason.to_owned(),
        };
        self.client().leave(req).await.map(|_| ())
    }
}

impl Drop for WorkerSession {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sets the position a [`WorkerSession`] sends with its next heartbeat; cloneable, usable from any task.
#[derive(Clone)]
pub struct PositionSetter(Arc<Mutex<Position>>);

impl PositionSetter {
    /// See [`WorkerSession::set_position`].
    pub fn set(&self, generation: Option<u64>, step: u64) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Position { generation, step };
    }
}

/// The leader's address a `NotLeader` refusal names, if `e` is one.
pub fn leader_of(e: &ClientError) -> Option<String> {
    match e {
        ClientError::Rpc { status, .. } if status.code() == tonic::Code::Unavailable => status
            .metadata()
            .get(LEADER_METADATA)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned),
        _ => None,
    }
}

/// Errors that retrying cannot fix: the coordinator refused us for good.
fn is_fatal(e: &ClientError) -> bool {
    use tonic::Code;
    match e {
        ClientError::Rpc { status, .. } => matches!(
            status.code(),
            Code::Unauthenticated
                | Code::PermissionDenied
                | Code::FailedPrecondition
                | Code::InvalidArgument
        ),
        ClientError::Decode { .. }
        | ClientError::InvalidToken(_)
        | ClientError::InvalidAddress { .. } => true,
        ClientError::Tls(_) | ClientError::Connect { .. } => false,
    }
}

/// What a session needs to connect to another coordinator.
#[derive(Clone)]
struct Redirect {
    token: String,
    tls: Option<ClientTls>,
}

/// The session's connection: the one calls use now, and how to open another when a non-leader redirects.
struct Link {
    current: Arc<Mutex<CoordinatorClient>>,
    redirect: Option<Redirect>,
}

async fn heartbeat_loop(
    Link { current: shared, redirect }: Link,
    request: JoinRequest,
    ack: JoinAck,
    position: Arc<Mutex<Position>>,
    tx: watch::Sender<Directive>,
    silent_since: Arc<Mutex<Option<Instant>>>,
    give_up_after: Duration,
) {
    let id = ack.worker_id.clone();
    let mut client = shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut last_ok = Instant::now();
    let mut highest_term = 0u64;
    let set_silent = |silent: bool| {
        let mut s = silent_since.lock().unwrap_or_else(|e| e.into_inner());
        match (silent, s.is_some()) {
            (true, false) => *s = Some(Instant::now()),
            (false, true) => *s = None,
            _ => {}
        }
    };
    loop {
        let pos = *position.lock().unwrap_or_else(|e| e.into_inner());
        let hb = Heartbeat {
            worker_id: id.clone(),
            generation: pos.generation,
            step: pos.step,
        };
        let answer = match client.heartbeat(hb).await {
            Ok(HeartbeatReply { term, generation, .. }) if term < highest_term => {
                tracing::warn!(
                    worker = %id, term, generation, highest_term,
                    "ignored a directive of an older term (a deposed coordinator); retrying"
                );
                set_silent(true);
                if last_ok.elapsed() > give_up_after {
                    tx.send_replace(Directive::Failed {
                        reason: format!(
                            "no coordinator of term {highest_term} or later answered for more than {give_up_after:?}"
                        ),
                    });
                    return;
                }
                tokio::time::sleep(ack.heartbeat_interval).await;
                continue;
            }
            Ok(HeartbeatReply { term, generation, directive }) => {
                highest_term = term;
                let kind = directive_kind(&directive);
                if matches!(directive, Directive::KeepGoing) {
                    tracing::debug!(worker = %id, term, generation, directive = kind, "directive obeyed");
                } else if *tx.borrow() != directive {
                    tracing::info!(worker = %id, term, generation, directive = kind, "directive obeyed");
                }
                Ok(directive)
            }
            Err(e) => Err(e),
        };
        let result = match answer {
            Ok(Directive::Rejoin { reason }) => {
                tracing::warn!(worker = %id, %reason, "coordinator asked this worker to join again");
                tx.send_replace(Directive::Wait {
                    reason: format!("re-joining: {reason}"),
                });
                client.join(request.clone()).await.map(|_| None)
            }
            Ok(d) => Ok(Some(d)),
            Err(e) => Err(e),
        };
        match result {
            Ok(Some(Directive::KeepGoing)) | Ok(None) => {
                last_ok = Instant::now();
                set_silent(false);
            }
            Ok(Some(d)) => {
                last_ok = Instant::now();
                set_silent(false);
                let done = matches!(d, Directive::Complete { .. } | Directive::Failed { .. });
                tx.send_if_modified(|cur| {
                    let changed = *cur != d;
                    *cur = d;
                    changed
                });
                if done {
                    return;
                }
            }
            Err(e) if leader_of(&e).is_some() && redirect.is_some() => {
                set_silent(true);
                let leader = leader_of(&e).unwrap_or_default();
                let r = redirect.as_ref().expect("checked");
                let once = RetryPolicy { attempts: 1, ..RetryPolicy::default() };
                match CoordinatorClient::connect_with(&leader, &r.token, r.tls.clone(), once).await {
                    Ok(c) => {
                        tracing::info!(worker = %id, leader, "the coordinator is not the leader; following the redirect");
                        client = c.clone();
                        *shared.lock().unwrap_or_else(|e| e.into_inner()) = c;
                        continue;
                    }
                    Err(ce) => tracing::warn!(worker = %id, leader, error = %ce, "cannot reach the leader named by a redirect; retrying"),
                }
            }
            Err(e) if is_fatal(&e) => {
                tracing::error!(worker = %id, error = %e, "coordinator refused this worker");
                tx.send_replace(Directive::Failed {
                    reason: e.to_string(),
                });
                return;
            }
            Err(e) if last_ok.elapsed() > give_up_after => {
                tracing::error!(worker = %id, error = %e, "coordinator unreachable; giving up");
                tx.send_replace(Directive::Failed {
                    reason: format!("coordinator unreachable for more than {give_up_after:?}: {e}"),
                });
                return;
            }
            Err(e) => {
                set_silent(true);
                tracing::warn!(worker = %id, error = %e, "heartbeat failed; retrying")
            }
        }
        tokio::time::sleep(ack.heartbeat_interval).await;
    }
}

/// The directive's name for logs.
fn directive_kind(d: &Directive) -> &'static str {
    match d {
        Directive::KeepGoing => "keep_going",
        Directive::Wait { .. } => "wait",
        Directive::Assign(_) => "assign",
        Directive::Complete { .. } => "complete",
        Directive::Failed { .. } => "failed",
        Directive::Rejoin { .. } => "rejoin",
    }
}
