//! Each resource module exposes `router()`; `crate::app` merges them.

pub mod actions;
pub mod backtest;
pub mod delegations;
pub mod docs;
pub mod events;
pub mod health;
pub mod ledger;
pub mod members;
pub mod notifications;
pub mod policies;
pub mod signing_keys;
pub mod slack;
pub mod stream;
pub mod tenant;
pub mod workflows;
