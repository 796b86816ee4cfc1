//! The Kubernetes API access the controller needs: the contract the Helm chart's (Cluster)Roles are
//! tested against (`tests/tests/chart.rs`), and that is itself tested against every request the
//! controller makes through a pipeline's whole life (`run_tests.rs`).

/// `(apiGroup, resource, verbs)`.
pub type Rule = (&'static str, &'static str, &'static [&'static str]);

/// On the namespaced resources the controller reconciles: a ClusterRole, or a Role per watched
/// namespace.
///
/// - `transactionpipelines`: list and watch (the watcher), patch (finalizer JSON patches). No `get`:
///   every read comes from the watch.
/// - `transactionpipelines/status`: patch (server-side apply).
/// - `secrets`: get (the API key Secret is read before it is written), patch (server-side apply),
///   create (an apply that creates the object is also authorized as `create`), delete: never called,
///   but the Secret carries an ownerReference to its pipeline, and the OwnerReferencesPermissionEnforcement
///   admission plugin (on in OpenShift) lets only a user who may delete an object set its
///   ownerReferences. No `update` on `transactionpipelines/finalizers`: the reference does not set
///   `blockOwnerDeletion`, which is what that permission would be for.
/// - `events` (`events.k8s.io`): create, and patch for a repeated event (a series).
pub const WORKLOAD_RULES: &[Rule] = &[
    (
        "tap.dev",
        "transactionpipelines",
        &["list", "watch", "patch"],
    ),
    ("tap.dev", "transactionpipelines/status", &["patch"]),
    ("", "secrets", &["get", "create", "patch", "delete"]),
    ("events.k8s.io", "events", &["create", "patch"]),
];

/// With leader election, in the Lease's namespace: read it, create it when missing, take, renew and
/// release it by patches.
pub const LEASE_RULES: &[Rule] = &[("coordination.k8s.io", "leases", &["get", "create", "patch"])];

/// Verbs in the rules that a pipeline's life does not make the controller call, and why they are
/// there all the same: `(apiGroup, resource, verb, why)`.
pub const NOT_CALLED: &[(&str, &str, &str, &str)] = &[(
    "",
    "secrets",
    "delete",
    "OwnerReferencesPermissionEnforcement: setting an ownerReference needs delete on the object",
)];
