//! The gRPC edge: prost messages to domain types (`TryFrom`, validating) and back (`From`, stamping the version).
//!
//! Every top-level message's `protocol_version` is checked here, so nothing past this module sees a message from a
//! peer of another version.

use std::time::Duration;

use crate::domain::{self, WorkerId, PROTOCOL_VERSION};
use crate::pb;

/// Why a wire message was refused. Both variants name the message; `Invalid` also names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtoError {
    /// The peer speaks another protocol version.
    #[error(
        "{message}: protocol version mismatch: the peer speaks version {theirs}, this build speaks version {ours}; \
         run coordinator and workers from the same release"
    )]
    VersionMismatch {
        message: &'static str,
        theirs: u32,
        ours: u32,
    },
    /// A field is missing or out of range.
    #[error("{message}.{field}: {problem}")]
    Invalid {
        message: &'static str,
        field: &'static str,
        problem: String,
    },
}

fn invalid(message: &'static str, field: &'static str, problem: impl Into<String>) -> ProtoError {
    ProtoError::Invalid {
        message,
        field,
        problem: problem.into(),
    }
}

fn check_version(message: &'static str, theirs: u32) -> Result<(), ProtoError> {
    if theirs == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ProtoError::VersionMismatch {
            message,
            theirs,
            ours: PROTOCOL_VERSION,
        })
    }
}

fn worker_id(
    message: &'static str,
    field: &'static str,
    s: String,
) -> Result<WorkerId, ProtoError> {
    WorkerId::new(s).map_err(|problem| invalid(message, field, format!("worker id {problem}")))
}

fn port(message: &'static str, field: &'static str, p: u32) -> Result<u16, ProtoError> {
    u16::try_from(p).map_err(|_| invalid(message, field, format!("port {p} is above 65535")))
}

fn non_empty(message: &'static str, field: &'static str, s: String) -> Result<String, ProtoError> {
    if s.trim().is_empty() {
        Err(invalid(message, field, "is empty"))
    } else {
        Ok(s)
    }
}

fn generation(message: &'static str, g: u64) -> Result<u64, ProtoError> {
    if g == 0 {
        Err(invalid(
            message,
            "generation",
            "is 0 (generations start at 1)",
        ))
    } else {
        Ok(g)
    }
}

fn checkpoint(
    message: &'static str,
    step: u64,
    location: String,
    manifest_sha256: String,
) -> Result<domain::CheckpointRef, ProtoError> {
    let location = non_empty(message, "location", location)?;
    if manifest_sha256.len() != 64 || !manifest_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(
            message,
            "manifest_sha256",
            format!("{manifest_sha256:?} is not 64 hex digits (a sha256 digest)"),
        ));
    }
    Ok(domain::CheckpointRef {
        step,
        location,
        manifest_sha256: manifest_sha256.to_ascii_lowercase(),
    })
}

fn data_plan(message: &'static str, m: pb::DataPlanRef) -> Result<domain::DataPlanRef, ProtoError> {
    let location = non_empty(message, "location", m.location)?;
    if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(message, "sha256", format!("{:?} is not 64 hex digits (a sha256 digest)", m.sha256)));
    }
    Ok(domain::DataPlanRef { location, sha256: m.sha256.to_ascii_lowercase() })
}

impl TryFrom<pb::JoinRequest> for domain::JoinRequest {
    type Error = ProtoError;
    fn try_from(m: pb::JoinRequest) -> Result<Self, ProtoError> {
        const M: &str = "JoinRequest";
        check_version(M, m.protocol_version)?;
        Ok(Self {
            worker_id: worker_id(M, "worker_id", m.worker_id)?,
            advertise_host: non_empty(M, "advertise_host", m.advertise_host)?,
            store_port: match port(M, "store_port", m.store_port)? {
                0 => None,
                p => Some(p),
            },
            device: m.device,
        })
    }
}

impl From<domain::JoinRequest> for pb::JoinRequest {
    fn from(d: domain::JoinRequest) -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            worker_id: d.worker_id.as_str().to_owned(),
            advertise_host: d.advertise_host,
            store_port: d.store_port.map_or(0, u32::from),
            device: d.device,
        }
    }
}

impl TryFrom<pb::JoinResponse> for domain::JoinAck {
    type Error = ProtoError;
    fn try_from(m: pb::JoinResponse) -> Result<Self, ProtoError> {
        const M: &str = "JoinResponse";
        check_version(M, m.protocol_version)?;
        if m.heartbeat_interval_ms == 0 {
            return Err(invalid(M, "heartbeat_interval_ms", "is 0"));
        }
        if m.heartbeat_timeout_ms <= m.heartbeat_interval_ms {
            return Err(invalid(
                M,
                "heartbeat_timeout_ms",
                format!(
                    "{} is not above heartbeat_interval_ms {}",
                    m.heartbeat_timeout_ms, m.heartbeat_interval_ms
                ),
            ));
        }
        Ok(Self {
            worker_id: worker_id(M, "worker_id", m.worker_id)?,
            heartbeat_interval: Duration::from_millis(m.heartbeat_interval_ms),
            heartbeat_timeout: Duration::from_millis(m.heartbeat_timeout_ms),
        })
    }
}

impl From<domain::JoinAck> for pb::JoinResponse {
    fn from(d: domain::JoinAck) -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            worker_id: d.worker_id.as_str().to_owned(),
            heartbeat_interval_ms: millis(d.heartbeat_interval),
            heartbeat_timeout_ms: millis(d.heartbeat_timeout),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl TryFrom<pb::HeartbeatRequest> for domain::Heartbeat {
    type Error = ProtoError;
    fn try_from(m: pb::HeartbeatRequest) -> Result<Self, ProtoError> {
        const M: &str = "HeartbeatRequest";
        check_version(M, m.protocol_version)?;
        Ok(Self {
            worker_id: worker_id(M, "worker_id", m.worker_id)?,
            generation: (m.generation != 0).then_some(m.generation),
            step: m.step,
        })
    }
}

impl From<domain::Heartbeat> for pb::HeartbeatRequest {
    fn from(d: domain::Heartbeat) -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            worker_id: d.worker_id.as_str().to_owned(),
            generation: d.generation.unwrap_or(0),
            step: d.step,
        }
    }
}

impl TryFrom<pb::HeartbeatResponse> for domain::HeartbeatReply {
    type Error = ProtoError;
    fn try_from(m: pb::HeartbeatResponse) -> Result<Self, ProtoError> {
        use pb::heartbeat_response::Directive as D;
        const M: &str = "HeartbeatResponse";
        use domain::Directive as Dd;
        check_version(M, m.protocol_version)?;
        let directive = match m
            .directive
            .ok_or_else(|| invalid(M, "directive", "is missing"))?
        {
            D::KeepGoing(_) => Dd::KeepGoing,
            D::Wait(w) => Dd::Wait { reason: w.reason },
            D::Assign(a) => Dd::Assign(Box::new(a.try_into()?)),
            D::Complete(c) => Dd::Complete {
                final_step: c.final_step,
            },
            D::Failed(f) => Dd::Failed { reason: f.reason },
            D::Rejoin(r) => Dd::Rejoin { reason: r.reason },
        };
        if let Dd::Assign(a) = &directive {
            if a.generation != m.generation {
                return Err(invalid(
                    M,
                    "generation",
                    format!("is {} but the assignment's is {}", m.generation, a.generation),
                ));
            }
        }
        Ok(Self { term: m.term, generation: m.generation, directive })
    }
}

impl From<domain::HeartbeatReply> for pb::HeartbeatResponse {
    fn from(r: domain::HeartbeatReply) -> Self {
        use pb::heartbeat_response::Directive as D;
        let directive = match r.directive {
            domain::Directive::KeepGoing => D::KeepGoing(pb::KeepGoing {}),
            domain::Directive::Wait { reason } => D::Wait(pb::Wait { reason }),
            domain::Directive::Assign(a) => D::Assign((*a).into()),
            domain::Directive::Complete { final_step } => D::Complete(pb::Complete { final_step }),
            domain::Directive::Failed { reason } => D::Failed(pb::Failed { reason }),
            domain::Directive::Rejoin { reason } => D::Rejoin(pb::Rejoin { reason }),
        };
        Self {
            protocol_version: PROTOCOL_VERSION,
            directive: Some(directive),
            term: r.term,
            generation: r.generation,
        }
    }
}

/// Nested in `HeartbeatResponse`, whose version was checked; the checks here are the assignment's invariants.
impl TryFrom<pb::Assignment> for domain::Assignment {
    type Error = ProtoError;
    fn try_from(m: pb::Assignment) -> Result<Self, ProtoError> {
        const M: &str = "Assignment";
        let generation = generation(M, m.generation)?;
        if m.world_size == 0 {
            return Err(invalid(M, "world_size", "is 0"));
        }
        if m.rank >= m.world_size {
            return Err(invalid(
                M,
                "rank",
                format!("{} is not below world_size {}", m.rank, m.world_size),
            ));
        }
        if m.per_device_batch_size == 0 {
            return Err(invalid(M, "per_device_batch_size", "is 0"));
        }
        if m.micro_batches_per_rank == 0 {
            return Err(invalid(M, "micro_batches_per_rank", "is 0"));
        }
        let product = u64::from(m.world_size)
            * u64::from(m.per_device_batch_size)
            * u64::from(m.micro_batches_per_rank);
        if product != u64::from(m.global_batch_size) {
            return Err(invalid(
                M,
                "global_batch_size",
                format!(
                    "{} != world_size {} x per_device_batch_size {} x micro_batches_per_rank {}",
                    m.global_batch_size,
                    m.world_size,
                    m.per_device_batch_size,
                    m.micro_batches_per_rank
                ),
            ));
        }
        if m.members.len() != m.world_size as usize {
            return Err(invalid(
                M,
                "members",
                format!(
                    "has {} entries, world_size is {}",
                    m.members.len(),
                    m.world_size
                ),
            ));
        }
        let members = m
            .members
            .into_iter()
            .map(|s| worker_id(M, "members", s))
            .collect::<Result<Vec<_>, _>>()?;
        let restore = m
            .restore
            .map(|c| checkpoint("Assignment.restore", c.step, c.location, c.manifest_sha256))
            .transpose()?;
        if let Some(r) = &restore {
            if r.step != m.start_step {
                return Err(invalid(
                    M,
                    "start_step",
                    format!(
                        "{} differs from the restored checkpoint's step {}",
                        m.start_step, r.step
                    ),
                ));
            }
        }
        if m.start_step > m.total_steps {
            return Err(invalid(
                M,
                "start_step",
                format!("{} is past total_steps {}", m.start_step, m.total_steps),
            ));
        }
        Ok(Self {
            generation,
            rank: m.rank,
            world_size: m.world_size,
            config_json: json_object(M, "config_json", m.config_json)?,
            store_host: non_empty(M, "store_host", m.store_host)?,
            store_port: match port(M, "store_port", m.store_port)? {
                0 => return Err(invalid(M, "store_port", "is 0")),
                p => p,
            },
            restore,
            start_step: m.start_step,
            total_steps: m.total_steps,
            global_batch_size: m.global_batch_size,
            per_device_batch_size: m.per_device_batch_size,
            micro_batches_per_rank: m.micro_batches_per_rank,
            members,
            data_plan: m.data_plan.map(|d| data_plan("Assignment.data_plan", d)).transpose()?,
        })
    }
}

impl From<domain::Assignment> for pb::Assignment {
    fn from(d: domain::Assignment) -> Self {
        Self {
            generation: d.generation,
            rank: d.rank,
            world_size: d.world_size,
            config_json: d.config_json,
            store_host: d.store_host,
            store_port: u32::from(d.store_port),
            restore: d.restore.map(|c| pb::CheckpointRef {
                step: c.step,
                location: c.location,
                manifest_sha256: c.manifest_sha256,
            }),
            start_step: d.start_step,
            total_steps: d.total_steps,
            global_batch_size: d.global_batch_size,
            per_device_batch_size: d.per_device_batch_size,
            micro_batches_per_rank: d.micro_batches_per_rank,
            members: d
                .members
                .into_iter()
                .map(|w| w.as_str().to_owned())
                .collect(),
            data_plan: d.data_plan.map(|p| pb::DataPlanRef { location: p.location, sha256: p.sha256 }),
        }
    }
}

impl TryFrom<pb::ProgressReport> for domain::ProgressReport {
    type Error = ProtoError;
    fn try_from(m: pb::ProgressReport) -> Result<Self, ProtoError> {
        const M: &str = "ProgressReport";
        check_version(M, m.protocol_version)?;
        let train = m.train.map(step_progress).transpose()?;
        let mut evals: Vec<domain::EvalScore> = Vec::with_capacity(m.evals.len());
        for e in m.evals {
            if e.task.trim().is_empty() {
                return Err(invalid(M, "evals.task", format!("is empty ({:?})", e.task)));
            }
            if evals.iter().any(|x| x.task == e.task) {
                return Err(invalid(M, "evals.task", format!("{:?} appears twice", e.task)));
            }
            evals.push(domain::EvalScore { task: e.task, step: e.step, ndcg_at_10: e.ndcg_at_10, mrr_at_10: e.mrr_at_10 });
        }
        let checkpoint_seconds = m
            .checkpoint_seconds
            .map(|v| non_negative(M, "checkpoint_seconds", v))
            .transpose()?;
        Ok(Self {
            worker_id: worker_id(M, "worker_id", m.worker_id)?,
            generation: generation(M, m.generation)?,
            step: m.step,
            train,
            evals,
            checkpoint_seconds,
            stopped_early: m.stopped_early,
        })
    }
}

/// Text that looks like a JSON object (the full parse is the config's, with its own errors).
fn json_object(message: &'static str, field: &'static str, s: String) -> Result<String, ProtoError> {
    let t = s.trim();
    if t.starts_with('{') && t.ends_with('}') {
        Ok(s)
    } else {
        let head: String = t.chars().take(40).collect();
        Err(invalid(message, field, format!("is not a JSON object (starts {head:?}); coordinator and worker must be the same release")))
    }
}

/// A finite value ≥ 0, or the error naming `message.field` and the value.
fn non_negative(message: &'static str, field: &'static str, v: f64) -> Result<f64, ProtoError> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(invalid(message, field, format!("is {v}; it must be a finite number >= 0")))
    }
}

fn step_progress(t: pb::StepProgress) -> Result<domain::StepProgress, ProtoError> {
    const M: &str = "ProgressReport";
    let loss = t.loss.ok_or_else(|| invalid(M, "train.loss", "is missing"))?;
    let nn = |field: &'static str, v: f64| non_negative(M, field, v);
    Ok(domain::StepProgress {
        loss: domain::LossParts {
            total: loss.total,
            ranking: loss.ranking,
            flops_query: loss.flops_query,
            flops_document: loss.flops_document,
        },
        flops_query: t.flops_query,
        flops_document: t.flops_document,
        active_dims_query: nn("train.active_dims_query", t.active_dims_query)?,
        active_dims_document: nn("train.active_dims_document", t.active_dims_document)?,
        learning_rate: nn("train.learning_rate", t.learning_rate)?,
        grad_norm: t.grad_norm,
        epoch: nn("train.epoch", t.epoch)?,
        samples: t.samples,
        tokens: t.tokens,
        step_seconds: nn("train.step_seconds", t.step_seconds)?,
        samples_per_second: nn("train.samples_per_second", t.samples_per_second)?,
        allreduce_seconds: t.allreduce_seconds.map(|v| nn("train.allreduce_seconds", v)).transpose()?,
        loss_scale: t.loss_scale.map(|v| nn("train.loss_scale", v)).transpose()?,
    })
}

impl From<domain::ProgressReport> for pb::ProgressReport {
    fn from(d: domain::ProgressReport) -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            worker_id: d.worker_id.as_str().to_owned(),
            generation: d.generation,
            step: d.step,
            train: d.train.map(|t| pb::StepProgress {
                loss: Some(pb::LossParts {
                    total: t.loss.total,
                    ranking: t.loss.ranking,
                    flops_query: t.loss.flops_query,
                    flops_document: t.loss.flops_document,
                }),
                flops_query: t.flops_query,
                flops_document: t.flops_document,
                active_dims_query: t.active_dims_query,
                active_dims_document: t.active_dims_document,
                learning_rate: t.learning_rate,
                grad_norm: t.grad_norm,
                epoch: t.epoch,
                samples: t.samples,
                tokens: t.tokens,
                step_seconds: t.step_seconds,
                samples_per_second: t.samples_per_second,
                allreduce_seconds: t.allreduce_seconds,
                loss_scale: t.loss_scale,
            }),
            evals: d
                .evals
                .into_iter()
                .map(|e| pb::EvalScore { task: e.task, step: e.step, ndcg_at_10: e.ndcg_at_10, mrr_at_10: e.mrr_at_10 })
                .collect(),
            checkpoint_seconds: d.checkpoint_seconds,
            stopped_early: d.stopped_early,
        }
    }
}

impl TryFrom<pb::CheckpointCommit> for domain::CheckpointCommit {
    type Error = ProtoError;
    fn try_from(m: pb::CheckpointCommit) -> Result<Self, ProtoError> {
        const M: &str = "CheckpointCommit";
        check_version(M, m.protocol_version)?;
        Ok(Self {
            worker_id: worker_id(M, "worker_id", m.worker_id)?,
            generation: generation(M, m.generation)?,
            checkpoint: checkpoint(M, m.step, m.location, m.manifest_sha256)?,
        })
    }
}

impl From<domain::CheckpointCommit> for pb::CheckpointCommit {
    fn from(d: domain::CheckpointCommit) -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            worker_id: d.worker_id.as_str().to_owned(),
            generation: d.generation,
            step: d.checkpoint.step,
            location: d.checkpoint.location,
            manifest_sha256: d.checkpoint.manifest_sha256,
        }
    }
}

impl TryFrom<pb::LeaveRequest> for domain::LeaveRequest {
    type Error = ProtoError;
    fn try_from(m: pb::LeaveRequest) -> Result<Self, ProtoError> {
        const M: &str = "LeaveRequest";
        check_version(M, m.protocol_version)?;
        Ok(Self {
            worker_id: worker_id(M, "worker_id", m.worker_id)?,
            reason: m.reason,
        })
    }
}

impl From<domain::LeaveRequest> for pb::LeaveRequest {
    fn from(d: domain::LeaveRequest) -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            worker_id: d.worker_id.as_str().to_owned(),
            reason: d.reason,
        }
    }
}

impl TryFrom<pb::Ack> for domain::Ack {
    type Error = ProtoError;
    fn try_from(m: pb::Ack) -> Result<Self, ProtoError> {
        check_version("Ack", m.protocol_version)?;
        Ok(Self {
            accepted: m.accepted,
            reason: m.reason,
        })
    }
}

impl From<domain::Ack> for pb::Ack {
    fn from(d: domain::Ack) -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            accepted: d.accepted,
            reason: d.reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment() -> pb::Assignment {
        pb::Assignment {
            generation: 2,
            rank: 1,
            world_size: 2,
            config_json: r#"{"training": {}}"#.into(),
            store_host: "10.0.0.1".into(),
            store_port: 29500,
            restore: Some(pb::CheckpointRef {
                step: 10,
                location: "s3://b/ckpt-10".into(),
                manifest_sha256: "ab".repeat(32),
            }),
            start_step: 10,
            total_steps: 100,
            global_batch_size: 32,
            per_device_batch_size: 8,
            micro_batches_per_rank: 2,
            members: vec!["w0".into(), "w1".into()],
            data_plan: Some(pb::DataPlanRef { location: "s3://b/out/data-plan/x.json".into(), sha256: "cd".repeat(32) }),
        }
    }

    #[test]
    fn data_plan_ref_is_checked_naming_message_and_field() {
        let mut m = assignment();
        m.data_plan.as_mut().unwrap().sha256 = "xyz".into();
        let e = domain::Assignment::try_from(m).unwrap_err().to_string();
        assert_eq!(e, "Assignment.data_plan.sha256: \"xyz\" is not 64 hex digits (a sha256 digest)");
        let mut m = assignment();
        m.data_plan.as_mut().unwrap().location = String::new();
        let e = domain::Assignment::try_from(m).unwrap_err().to_string();
        assert!(e.starts_with("Assignment.data_plan.location"), "{e}");
        let mut m = assignment();
        m.data_plan = None;
        assert_eq!(domain::Assignment::try_from(m).unwrap().data_plan, None);
    }

    #[test]
    fn assignment_config_must_be_json() {
        let mut m = assignment();
        m.config_json = "training:\n  max_steps: 3\n".into();
        let e = domain::Assignment::try_from(m).unwrap_err().to_string();
        assert!(e.starts_with("Assignment.config_json: is not a JSON object (starts \"training:"), "{e}");
    }

    #[test]
    fn assignment_round_trips() {
        let d = domain::Assignment::try_from(assignment()).unwrap();
        assert_eq!(d.members[1].as_str(), "w1");
        assert_eq!(pb::Assignment::from(d), assignment());
    }

    #[test]
    fn assignment_batch_arithmetic_is_checked() {
        let mut m = assignment();
        m.micro_batches_per_rank = 3;
        let e = domain::Assignment::try_from(m).unwrap_err().to_string();
        assert!(
            e.starts_with("Assignment.global_batch_size: 32 != world_size 2"),
            "{e}"
        );
    }

    #[test]
    fn rank_must_be_below_world_size() {
        let mut m = assignment();
        m.rank = 2;
        let e = domain::Assignment::try_from(m).unwrap_err().to_string();
        assert_eq!(e, "Assignment.rank: 2 is not below world_size 2");
    }

    #[test]
    fn version_mismatch_names_message_and_both_versions() {
        let m = pb::HeartbeatRequest {
            protocol_version: 7,
            worker_id: "w".into(),
            generation: 0,
            step: 0,
        };
        let e = domain::Heartbeat::try_from(m).unwrap_err();
        assert_eq!(
            e,
            ProtoError::VersionMismatch {
                message: "HeartbeatRequest",
                theirs: 7,
                ours: PROTOCOL_VERSION
            }
        );
        assert!(
            e.to_string().contains("version 7")
                && e.to_string()
                    .contains(&format!("version {PROTOCOL_VERSION}"))
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let m = pb::JoinRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: "w 1".into(),
            advertise_host: "h".into(),
            store_port: 0,
            device: "cpu".into(),
        };
        let e = domain::JoinRequest::try_from(m).unwrap_err().to_string();
        assert!(
            e.starts_with("JoinRequest.worker_id: worker id \"w 1\" contains ' '"),
            "{e}"
        );

        let m = pb::CheckpointCommit {
            protocol_version: PROTOCOL_VERSION,
            worker_id: "w1".into(),
            generation: 1,
            step: 5,
            location: "/tmp/c".into(),
            manifest_sha256: "xyz".into(),
        };
        let e = domain::CheckpointCommit::try_from(m)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("CheckpointCommit.manifest_sha256: \"xyz\" is not 64 hex digits"),
            "{e}"
        );

        let m = pb::JoinRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: "w1".into(),
            advertise_host: "h".into(),
            store_port: 70000,
            device: "cpu".into(),
        };
        let e = domain::JoinRequest::try_from(m).unwrap_err().to_string();
        assert_eq!(e, "JoinRequest.store_port: port 70000 is above 65535");
    }

    #[test]
    fn missing_directive_is_an_error() {
        let m = pb::HeartbeatResponse {
            protocol_version: PROTOCOL_VERSION,
            directive: None,
            term: 0,
            generation: 0,
        };
        let e = domain::HeartbeatReply::try_from(m).unwrap_err().to_string();
        assert_eq!(e, "HeartbeatResponse.directive: is missing");
    }
    fn progress() -> domain::ProgressReport {
        let mut r = domain::ProgressReport::new(WorkerId::new("w0").unwrap(), 3, 12);
        r.train = Some(domain::StepProgress {
            loss: domain::LossParts { total: 1.5, ranking: 1.0, flops_query: 0.2, flops_document: 0.3 },
            flops_query: 20.0,
            flops_document: f64::NAN,
            active_dims_query: 31.5,
            active_dims_document: 120.25,
            learning_rate: 2e-5,
            grad_norm: 0.75,
            epoch: 0.5,
            samples: 32,
            tokens: 4096,
            step_seconds: 0.4,
            samples_per_second: 80.0,
            allreduce_seconds: Some(0.01),
            loss_scale: None,
        });
        r.evals = vec![domain::EvalScore { task: "norquad".into(), step: 12, ndcg_at_10: 0.6, mrr_at_10: None }];
        r.checkpoint_seconds = Some(1.25);
        r.stopped_early = true;
        r
    }

    #[test]
    fn progress_round_trips_every_typed_field() {
        let d = progress();
        let back = domain::ProgressReport::try_from(pb::ProgressReport::from(d.clone())).unwrap();
        let (t, bt) = (d.train.unwrap(), back.train.unwrap());
        // NaN FLOPS (a diverged step) cross the wire as NaN; every other field is equal.
        assert!(bt.flops_document.is_nan());
        assert_eq!(domain::StepProgress { flops_document: 0.0, ..bt }, domain::StepProgress { flops_document: 0.0, ..t });
        assert_eq!((back.evals, back.checkpoint_seconds, back.stopped_early), (d.evals, d.checkpoint_seconds, true));
    }

    #[test]
    fn bad_progress_values_are_refused_naming_message_and_field() {
        let mut m = pb::ProgressReport::from(progress());
        m.train.as_mut().unwrap().step_seconds = -1.0;
        let e = domain::ProgressReport::try_from(m).unwrap_err().to_string();
        assert_eq!(e, "ProgressReport.train.step_seconds: is -1; it must be a finite number >= 0");

        let mut m = pb::ProgressReport::from(progress());
        m.train.as_mut().unwrap().learning_rate = f64::NAN;
        let e = domain::ProgressReport::try_from(m).unwrap_err().to_string();
        assert!(e.starts_with("ProgressReport.train.learning_rate: is NaN"), "{e}");

        let mut m = pb::ProgressReport::from(progress());
        m.train.as_mut().unwrap().loss = None;
        let e = domain::ProgressReport::try_from(m).unwrap_err().to_string();
        assert_eq!(e, "ProgressReport.train.loss: is missing");

        let mut m = pb::ProgressReport::from(progress());
        m.evals.push(m.evals[0].clone());
        let e = domain::ProgressReport::try_from(m).unwrap_err().to_string();
        assert_eq!(e, "ProgressReport.evals.task: \"norquad\" appears twice");

        let mut m = pb::ProgressReport::from(progress());
        m.evals[0].task = " ".into();
        let e = domain::ProgressReport::try_from(m).unwrap_err().to_string();
        assert!(e.starts_with("ProgressReport.evals.task: is empty"), "{e}");

        let mut m = pb::ProgressReport::from(progress());
        m.checkpoint_seconds = Some(f64::INFINITY);
        let e = domain::ProgressReport::try_from(m).unwrap_err().to_string();
        assert!(e.starts_with("ProgressReport.checkpoint_seconds: is inf"), "{e}");
    }

    /// Arbitrary bytes decoded as each message the coordinator or a worker receives, then converted: the
    /// proto edge returns a value or a `ProtoError`, never a panic (issue #17's property test).
    mod arbitrary_messages {
        use super::*;
        use prost::Message;
        use proptest::prelude::*;

        fn convert_all(bytes: &[u8]) {
            if let Ok(m) = pb::JoinRequest::decode(bytes) {
                let _ = domain::JoinRequest::try_from(m);
            }
            if let Ok(m) = pb::JoinResponse::decode(bytes) {
                let _ = domain::JoinAck::try_from(m);
            }
            if let Ok(m) = pb::HeartbeatRequest::decode(bytes) {
                let _ = domain::Heartbeat::try_from(m);
            }
            if let Ok(m) = pb::HeartbeatResponse::decode(bytes) {
                let _ = domain::HeartbeatReply::try_from(m);
            }
            if let Ok(m) = pb::Assignment::decode(bytes) {
                let _ = domain::Assignment::try_from(m);
            }
            if let Ok(m) = pb::ProgressReport::decode(bytes) {
                let _ = domain::ProgressReport::try_from(m);
            }
            if let Ok(m) = pb::CheckpointCommit::decode(bytes) {
                let _ = domain::CheckpointCommit::try_from(m);
            }
            if let Ok(m) = pb::LeaveRequest::decode(bytes) {
                let _ = domain::LeaveRequest::try_from(m);
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                convert_all(&bytes);
            }

            /// Valid messages with one field flipped to an arbitrary value: the mutations that decode.
            #[test]
            fn mutated_valid_messages_never_panic(pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
                let mut bytes = assignment().encode_to_vec();
                let i = pos.index(bytes.len());
                bytes[i] = byte;
                convert_all(&bytes);
                let n = cut.index(bytes.len() + 1);
                convert_all(&bytes[..n]);
            }
        }
    }
}
