"""Network pruning: one-shot structured (filters removed) and iterative unstructured (masks).

Three separate things, as in Torch-Pruning, one module each:
- `criteria`: scoring. `STRUCTURED_CRITERIA` (`weight (C_out, C_in, kh, kw) -> (C_out,)`)
  and `UNSTRUCTURED_CRITERIA` (`weight -> scores of its shape`); a criterion is one
  decorated function, and the entry points take its name (`criterion="l1"`, "magnitude");
- `structured` / `unstructured`: cutting. `structured_prune` builds a new, smaller VGG from
  the kept widths; `global_prune_` attaches masks (`attrlib.masks`) in place;
- `schedule`: which convs at which rate (`spec_rates`) and what is left after k rounds
  (`remaining_fraction`); the loop over iterations and fine-tuning lives with the stages.

Everything is importable from `attrlib.prune`. The mask helpers live in `attrlib.masks`
(below both this package and `attrlib.engine`) and are re-exported here for callers of the
single-module `attrlib.prune`, as are the names `structured_l1` and `global_magnitude_`.

Paper: Park et al. (2020), "Attribution Preservation in Network Compression" (SPEC: Training
recipes), built on Li et al. (2017) L1-norm filter pruning and Han et al. (2015) global
magnitude pruning.
"""

from attrlib.masks import (
    attach_masks_,
    effective_weight,
    has_masks,
    make_permanent_,
    permanent_copy,
)
from attrlib.prune.criteria import (
    STRUCTURED_CRITERIA,
    UNSTRUCTURED_CRITERIA,
    ScoreFn,
    l1_filter_norm,
    magnitude,
)
from attrlib.prune.schedule import (
    SPEC_FIRST_CONVS,
    SPEC_LAST_CONVS,
    conv_names,
    remaining_fraction,
    spec_rates,
)
from attrlib.prune.structured import keep_indices, num_kept, structured_l1, structured_prune
from attrlib.prune.unstructured import global_magnitude_, global_prune_

CRITERIA = STRUCTURED_CRITERIA  # its name when filter scores were the only criteria

__all__ = [
    "CRITERIA",
    "SPEC_FIRST_CONVS",
    "SPEC_LAST_CONVS",
    "STRUCTURED_CRITERIA",
    "UNSTRUCTURED_CRITERIA",
    "ScoreFn",
    "attach_masks_",
    "conv_names",
    "effective_weight",
    "global_magnitude_",
    "global_prune_",
    "has_masks",
    "keep_indices",
    "l1_filter_norm",
    "magnitude",
    "make_permanent_",
    "num_kept",
    "permanent_copy",
    "remaining_fraction",
    "spec_rates",
    "structured_l1",
    "structured_prune",
]
