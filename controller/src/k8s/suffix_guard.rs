//! One stack per `environmentSuffix`: of the pipelines sharing a suffix, the oldest owns the stack and
//! the others touch nothing in AWS until it is gone; then the next oldest is reconciled at once.

use std::sync::{Arc, Mutex, RwLock};

use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;

use crate::api::TransactionPipeline;

/// Sends an extra reconcile request to a running controller.
pub type Waker = futures::channel::mpsc::UnboundedSender<ObjectRef<TransactionPipeline>>;

/// The reflector stores of the running controllers, and their reconcile channels.
#[derive(Default)]
pub struct SuffixGuard {
    stores: RwLock<Vec<Store<TransactionPipeline>>>,
    /// Per running controller: the namespace it watches (`None` = all) and a channel that makes it
    /// reconcile an object now.
    wakers: Mutex<Vec<(Option<String>, Waker)>>,
}

type AgeKey = (bool, Option<k8s_openapi::jiff::Timestamp>, String, String);

/// Older sorts first; a pipeline without creationTimestamp counts as the newest.
fn age_key(p: &TransactionPipeline) -> AgeKey {
    let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (
        created.is_none(),
        created,
        p.namespace().unwrap_or_default(),
        p.name_any(),
    )
}

fn same_suffix_other(a: &TransactionPipeline, b: &TransactionPipeline) -> bool {
    a.spec.environment_suffix == b.spec.environment_suffix
        && (a.namespace(), a.name_any()) != (b.namespace(), b.name_any())
}

impl SuffixGuard {
    /// The reflector stores of the running controllers (one per watched namespace, or one for all).
    pub fn set_stores(&self, stores: Vec<Store<TransactionPipeline>>) {
        *self.stores.write().expect("stores lock poisoned") = stores;
    }

    /// The channels through which the running controllers (namespace, or `None` for all) take extra
    /// reconcile requests (`Controller::reconcile_on`).
    pub fn set_wakers(&self, wakers: Vec<(Option<String>, Waker)>) {
        *self.wakers.lock().expect("wakers lock poisoned") = wakers;
    }

    fn oldest_other(
        &self,
        pipeline: &TransactionPipeline,
        keep: impl Fn(&TransactionPipeline) -> bool,
    ) -> Option<Arc<TransactionPipeline>> {
        let stores = self.stores.read().expect("stores lock poisoned");
        stores
            .iter()
            .flat_map(|s| s.state())
            .filter(|other| same_suffix_other(other, pipeline) && keep(other))
            .min_by(|a, b| age_key(a).cmp(&age_key(b)))
    }

    /// The oldest other pipeline with the same `environmentSuffix`, if it is older than `pipeline`
    /// (creationTimestamp, then namespace/name): that one owns the stack.
    pub fn older_with_same_suffix(
        &self,
        pipeline: &TransactionPipeline,
    ) -> Option<Arc<TransactionPipeline>> {
        let me = age_key(pipeline);
        self.oldest_other(pipeline, |other| age_key(other) < me)
    }

    /// `pipeline` is going away: the oldest remaining pipeline with the same suffix (held back as a
    /// duplicate until now) is reconciled at once instead of at its next resync.
    pub fn wake_successor(&self, pipeline: &TransactionPipeline) {
        let Some(successor) = self.oldest_other(pipeline, |other| {
            other.metadata.deletion_timestamp.is_none()
        }) else {
            return;
        };
        let wakers = self.wakers.lock().expect("wakers lock poisoned");
        for (namespace, waker) in wakers.iter() {
            if namespace.is_none() || *namespace == successor.namespace() {
                tracing::info!(pipeline = %successor.owner_key(), freed_by = %pipeline.owner_key(), "environmentSuffix freed: reconciling the next pipeline");
                let _ = waker.unbounded_send(ObjectRef::from_obj(successor.as_ref()));
            }
        }
    }
}
