//! The provider room: what the gateway knows about speaking to each upstream API family
//! (where its operations live). It uses the config, metering and translate rooms below it.

pub mod request;
pub mod urls;
