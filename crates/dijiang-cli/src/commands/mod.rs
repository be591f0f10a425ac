//! One module per subcommand.

pub mod bench;
pub mod checkpoint;
pub mod compare;
pub mod convert;
pub mod eval;
pub mod evaluate;
pub mod fidelity;
pub mod generate;
pub mod inference;
pub mod inspect;
pub mod prepare;
pub mod train;
