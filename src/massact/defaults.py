"""The defaults the commands show in their help, kept free of heavy imports.

`massact --help` and a usage error must not wait for torch, transformers or matplotlib, so the values an
option's help names live here and the analysis packages take them from here.
"""

DEFAULT_PROMPT = "Summer is warm. Winter is cold."
PAPER_PROMPT = (
    "The following are multiple choice questions (with answers) about machine learning.\n\n"
    " A 6-sided die is rolled 15 times and the results are: side 1 comes up 0 times;"
)
DEFAULT_CORPUS = "shakespeare"
MODES = ("original", "zero", "mean", "random")  # interventions
ATLAS_STEPS = ("scan", "corpus", "trace", "attention", "quant")
DEFAULT_SCHEMES = ("W8", "W8A8", "W8A8-token", "W4A8", "W4A4", "KV4")  # quant
DEFAULT_STRATEGIES = ("none", "outlier-tokens", "best")  # quant
DEFAULT_POLICIES = ("full", "window", "sinks:1", "sinks:4", "detected")  # stream
ATTENTION_VARIANTS = (  # train: the designs of `massact.train.variants`
    "default",
    "sink-token",
    "attn-bias",
    "sink-logit",
    "gated",
    "gated-head",
    "softmax1",
    "softpick",
    "sigmoid",
    "single-scale-norm",
)
TRAIN_PRESETS = (
    "backcopy-test",
    "backcopy-cpu",
    "backcopy-llama",
    "cpu-small",
    "gpt2-124m",
)  # the keys of `train.presets.PRESETS`
