//! One module per subcommand: its clap arguments and the call into the library.

pub mod bench;
pub mod corpus;
pub mod eval;
pub mod export;
pub mod info;
pub mod launch;
pub mod plot;
pub mod preprocess;
pub mod pretrain;
