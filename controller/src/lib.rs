//! tap-controller: keeps a TransactionPipeline converged into its AWS stack.
