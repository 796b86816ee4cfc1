//! One driver on one resource, and the assertions every driver test makes along its life: converged
//! (empty diff, and observing sends read calls only), drift found field by field, a correction that writes
//! exactly the drifted parts, deletion that leaves nothing and may be repeated.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context};
use tap_controller::aws::Aws;
use tap_controller::desired::{ResourceId, Tags};
use tap_controller::drivers::{diff, Changes, Ctx, Driver, DriverError, Observed, Outputs};

use crate::stack::OWNER;

/// Driver `D` on resource `id`, with the desired spec and tags it is held to.
pub struct Subject<'a, D: Driver> {
    pub driver: D,
    pub aws: &'a Aws,
    pub id: ResourceId,
    pub desired: D::Spec,
    pub tags: Tags,
    /// Outputs of the dependencies, as a walk would hand them over.
    pub deps: BTreeMap<ResourceId, Outputs>,
    /// Fields this emulator cannot keep (a documented gap): left out of every assertion.
    pub gaps: BTreeSet<String>,
}

/// The write operations counted since the last reset, by operation name.
pub fn written(aws: &Aws) -> BTreeSet<String> {
    aws.calls.writes().into_keys().map(|(_, op)| op).collect()
}

impl<'a, D: Driver> Subject<'a, D> {
    pub fn new(driver: D, aws: &'a Aws, id: ResourceId, desired: D::Spec, tags: Tags) -> Self {
        Self {
            driver,
            aws,
            id,
            desired,
            tags,
            deps: BTreeMap::new(),
            gaps: BTreeSet::new(),
        }
    }

    /// Leaves `fields` out of every assertion (an emulator's documented read-back gap).
    pub fn ignoring(mut self, fields: &[&str]) -> Self {
        self.gaps.extend(fields.iter().map(|f| f.to_string()));
        self
    }

    /// The diff of `desired` against `observed`, without this emulator's gaps.
    pub fn diff(&self, desired: &D::Spec, tags: &Tags, observed: &Observed<D::Spec>) -> Changes {
        let mut changes = diff(desired, tags, &observed.spec, &observed.tags);
        changes.diffs.retain(|d| !self.gaps.contains(&d.field));
        changes
    }

    /// Hands `outputs` over as the outputs of dependency `id`.
    pub fn with_dep(mut self, id: ResourceId, outputs: Outputs) -> Self {
        self.deps.insert(id, outputs);
        self
    }

    pub fn ctx(&self) -> Ctx<'_> {
        Ctx {
            aws: self.aws,
            id: &self.id,
            owner: OWNER,
            deps: &self.deps,
            // The driver's whole tag sync (the stack tests cover Merge).
            tag_policy: tap_controller::api::TagPolicy::Exclusive,
        }
    }

    pub fn name(&self) -> &str {
        &self.id.name
    }

    pub async fn observe(&self) -> anyhow::Result<Option<Observed<D::Spec>>> {
        self.observe_as(&self.desired).await
    }

    pub async fn observe_as(&self, desired: &D::Spec) -> anyhow::Result<Option<Observed<D::Spec>>> {
        Ok(self.driver.observe(&self.ctx(), desired).await?)
    }

    /// The resource, which must exist.
    pub async fn get(&self) -> anyhow::Result<Observed<D::Spec>> {
        self.observe()
            .await?
            .with_context(|| format!("{} not found", self.id))
    }

    pub async fn assert_absent(&self) -> anyhow::Result<()> {
        if self.observe().await?.is_some() {
            bail!("{} exists", self.id);
        }
        Ok(())
    }

    pub async fn try_create(&self) -> Result<Outputs, DriverError> {
        self.driver
            .create(&self.ctx(), &self.desired, &self.tags)
            .await
    }

    pub async fn create(&self) -> anyhow::Result<Outputs> {
        self.try_create()
            .await
            .with_context(|| format!("creating {}", self.id))
    }

    /// Observes, requires the resource to exist and to match its desired spec exactly, and proves that
    /// observing sends read calls only.
    pub async fn assert_converged(&self) -> anyhow::Result<Observed<D::Spec>> {
        self.assert_converged_as(&self.desired).await
    }

    pub async fn assert_converged_as(
        &self,
        desired: &D::Spec,
    ) -> anyhow::Result<Observed<D::Spec>> {
        let observed = self
            .observe_as(desired)
            .await?
            .with_context(|| format!("{} not found", self.id))?;
        let changes = self.diff(desired, &self.tags, &observed);
        if !changes.is_empty() {
            bail!("{} is not converged: {:#?}", self.id, changes.diffs);
        }
        self.aws.calls.reset();
        let again = self
            .observe_as(desired)
            .await?
            .context("gone on the second observe")?;
        assert_eq!(
            self.aws.calls.writes(),
            Default::default(),
            "observe must not write"
        );
        assert!(self.aws.calls.total() > 0, "the call counter saw the reads");
        assert_eq!(
            again, observed,
            "two observes of an unchanged resource agree"
        );
        Ok(observed)
    }

    /// Observes and returns the diff, asserting it names exactly `fields` (dotted paths).
    pub async fn assert_drift(
        &self,
        fields: &[&str],
    ) -> anyhow::Result<(Observed<D::Spec>, Changes)> {
        self.assert_drift_as(&self.desired, fields).await
    }

    pub async fn assert_drift_as(
        &self,
        desired: &D::Spec,
        fields: &[&str],
    ) -> anyhow::Result<(Observed<D::Spec>, Changes)> {
        let observed = self.observe_as(desired).await?.context("resource gone")?;
        let changes = self.diff(desired, &self.tags, &observed);
        let got: BTreeSet<&str> = changes.diffs.iter().map(|d| d.field.as_str()).collect();
        let want: BTreeSet<&str> = fields.iter().copied().collect();
        assert_eq!(got, want, "drift of {}: {:#?}", self.id, changes.diffs);
        Ok((observed, changes))
    }

    /// Applies `changes`, checks that the update sent exactly the write operations `writes` (it touches
    /// the drifted fields and nothing else), then that the resource is converged again.
    pub async fn correct(
        &self,
        observed: &Observed<D::Spec>,
        changes: &Changes,
        writes: &[&str],
    ) -> anyhow::Result<Observed<D::Spec>> {
        self.correct_as(&self.desired, observed, changes, writes)
            .await
    }

    pub async fn correct_as(
        &self,
        desired: &D::Spec,
        observed: &Observed<D::Spec>,
        changes: &Changes,
        writes: &[&str],
    ) -> anyhow::Result<Observed<D::Spec>> {
        self.aws.calls.reset();
        self.driver
            .update(&self.ctx(), desired, &self.tags, observed, changes)
            .await
            .with_context(|| format!("updating {}", self.id))?;
        let expected: BTreeSet<String> = writes.iter().map(|w| w.to_string()).collect();
        assert_eq!(
            written(self.aws),
            expected,
            "writes of the update of {}",
            self.id
        );
        self.assert_converged_as(desired).await
    }

    /// Updates toward another desired spec and tag set than the subject's own.
    pub async fn update_with(
        &self,
        desired: &D::Spec,
        tags: &Tags,
        observed: &Observed<D::Spec>,
        changes: &Changes,
    ) -> Result<Outputs, DriverError> {
        self.driver
            .update(&self.ctx(), desired, tags, observed, changes)
            .await
    }

    /// Deletes, checks it is gone, deletes again (not-found is success).
    pub async fn assert_deleted(&self, observed: &Observed<D::Spec>) -> anyhow::Result<()> {
        let ctx = self.ctx();
        self.driver.delete(&ctx, observed).await?;
        assert!(
            self.observe().await?.is_none(),
            "{} still exists after delete",
            self.id
        );
        self.driver
            .delete(&ctx, observed)
            .await
            .context("second delete")?;
        Ok(())
    }
}

/// `tags` with `team` changed, as someone else would.
pub fn drifted_tags(tags: &Tags) -> Tags {
    let mut t = tags.clone();
    t.insert("team".into(), "someone-else".into());
    t
}
