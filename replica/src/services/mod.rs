//! Services beside the reference B+-tree, behind the same traits: a null
//! service (no state, every command independent: CBASE's micro-benchmark) and
//! a linked list (the reconfiguration paper, section IV-B3).

mod list;
mod null;

pub use list::{LinkedList, ListOp, ListService, ListState};
pub use null::{NullOp, NullService};
