//! Each resource module exposes `router()`; `crate::app` merges them.

pub mod actions;
pub mod docs;
pub mod health;
pub mod ledger;
pub mod policies;
pub mod tenant;
