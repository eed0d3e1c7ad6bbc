//! The vocabulary of Sluice: types that can only be built valid, so that the
//! HTTP layer, the store and the dispatcher never check them again.

mod callback_url;
mod ids;
mod outcome;
mod priority;
mod settings;
mod status;
mod tenant;
mod time;

pub use callback_url::{CallbackUrl, CallbackUrlError};
pub use ids::{BatchId, IngestionId, ItemId, ItemIdError};
pub use outcome::{FailureKind, FetchFailure, IdOutcome, Outcome};
pub use priority::{Priority, PriorityError};
pub use settings::{BatchSize, Interval, SettingError};
pub use status::{BatchStatus, IngestionStatus};
pub use tenant::{GroupName, NameError, TenantName, name_from_store, stored_name};
pub use time::{Clock, Timestamp};
