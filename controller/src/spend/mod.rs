//! Budget spend, in one room: the ledger of accounts and their windows (`ledger`), the
//! accounts a compiled config defines (`accounts`), the usage stream from dataplanes and
//! the books it keeps (`usage`), where the ledger is kept in a cluster (`cluster_store`,
//! a `UsageLedger` object), and each Budget's spend written to its status
//! (`budget_status`).

pub mod accounts;
pub mod budget_status;
pub mod cluster_store;
pub mod ledger;
pub mod usage;
