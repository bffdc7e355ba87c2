"""``cortexmap check``: the tool proves its assumptions on the model it is given.

Each invariant below is measured on the user's model and a few of the check's own prompts
(:mod:`cortexmap.checks.inputs`), as its largest deviation against a tolerance for the model's
dtype (:mod:`cortexmap.checks.report`):

==================  ==========================================================================
hooks_noop          head hooks that read or pass through leave the logits bit-identical
identity            ablate no head, amplify every head by 0, patch a prompt into itself
geometry            the geometry table's layers, heads, KV heads, head dim, sliding windows
weight_edit         ablation / amplification equal scaling the output-projection columns
projection_sum      the heads' outputs, projected one by one plus the bias, give the block's output
head_values         each head's slice equals its attention weights times its KV head's values
batching            a batch equals its prompts one at a time
padding             left / right padding with mask and position ids change no real token
attention_impl      eager attention (what probes read) and the default implementation agree
attention_rows      probe attention maps: one per layer, rows summing to 1
exact_sweep         the exact engine equals one ``intervene`` block per head (patch, mean, zero)
attribution_sign    the attribution screen's sign against large exact effects (reported only)
==================  ==========================================================================

Not checked: generation with a KV cache, multi-GPU placement (``device="auto"``) beyond the
devices the check runs on, resample ablation's pairing, tasks and their tokenization, and the
statistics of the analysis (those have their own calibration tests).
"""

from cortexmap.checks.report import CheckReport, InvariantResult, last_record
from cortexmap.checks.run import check, gate

__all__ = ["CheckReport", "InvariantResult", "check", "gate", "last_record"]
