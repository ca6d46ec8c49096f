//! Services beside the reference B+-tree, behind the same traits: a null
//! service (no state, every command independent: CBASE's micro-benchmark), a
//! linked list (the reconfiguration paper, section IV-B3) and a tuple space
//! (sections IV-B1 and 2).

mod list;
mod null;
mod tuple;

pub use list::{LinkedList, ListOp, ListService, ListState};
pub use null::{NullOp, NullService};
pub use tuple::{
    MAX_FIELDS, Template, Tuple, TupleModel, TupleOp, TupleService, TupleSpace, TupleViolation,
};
