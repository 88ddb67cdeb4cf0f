//! The workflow engine (issue 17) and the NATS intake of domain events.
//!
//! - [`Engine`] tails the ledger's log (its own checkpoint, `workflows`, under its tailer lock;
//!   it reports to the ledger's health like every tailer). A received event
//!   (`intake_event`/`EventReceived`) starts the runs it recorded; every event of an action a
//!   run's step submitted that may end the step (approved, rejected,
//!   expired, cancelled, executed, failed, skipped), moves that run on
//!   ([`countersign_app::workflows::advance`]). Every step it takes is a command the ledger
//!   refuses when it was taken before, so replaying the log from any checkpoint starts no run
//!   twice and submits no step twice.
//! - [`NatsIntake`] consumes CloudEvents published to JetStream on
//!   `<prefix>.intake.<tenant>.<type>` (stream `COUNTERSIGN_INTAKE`; publishers set `Nats-Msg-Id`
//!   to the event id) and hands each to the same use case as `POST /v1/events`. A refused event
//!   goes to `<prefix>.intake.dlq` with its reason.

mod engine;
pub mod intake;

pub use engine::Engine;
pub use intake::{HEADER_CODE, HEADER_REASON, HEADER_SUBJECT, IntakeConfig, NatsIntake};
