//! The metering room: what an answer used (`usage`, `tokens`), what it costs (`prices`),
//! what a key may still spend and how fast (`quota`), and the stream of usage records to
//! the controller (`reporter`). It uses the config and base rooms.

pub mod prices;
pub mod quota;
pub mod reporter;
pub mod tokens;
pub mod usage;
