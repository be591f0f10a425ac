//! One module per subcommand.

pub mod convert;
pub mod eval;
pub mod generate;
pub mod inspect;
