"""The WMDP cases: forget hazardous biology or cyber-security knowledge, keep general knowledge.

Targets are WMDP-bio / WMDP-cyber; side effects are four MMLU subjects; the retain corpus is
WikiText-2. ``--forget-corpus`` and ``--retain-corpus`` replace either corpus.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsg.api import (
    CaseDefaults,
    DataSource,
    EvalSet,
    HubDataset,
    PromptFormat,
    UserError,
)
from dsg_wmdp.mcq import mmlu_dataset, mmlu_set, wmdp_dataset, wmdp_set

MODEL = "gemma-2-2b-it"
SAE = "gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_142"
WIKITEXT = HubDataset("Salesforce/wikitext", "wikitext-2-raw-v1", "test")
CYBER_FORGET = HubDataset("cais/wmdp-corpora", "cyber-forget-corpus", "train")
BIO_FORGET_HELP = (
    "the WMDP-bio forget corpus (bio-forget-corpus.jsonl) is gated and not on the hub: request "
    "it through the WMDP corpora request form linked from the WMDP dataset card "
    "(huggingface.co/datasets/cais/wmdp-corpora), then pass --forget-corpus PATH/bio-forget-"
    "corpus.jsonl"
)
COMMON_MMLU = ("high_school_us_history", "high_school_geography", "human_aging")


@dataclass(frozen=True)
class WMDPCase:
    """One WMDP case; ``forget`` is None when the forget corpus must come from the user."""

    name: str
    description: str
    defaults: CaseDefaults
    target: str
    mmlu_subjects: tuple[str, ...]
    forget: HubDataset | None

    def forget_texts(self, data: DataSource) -> list[str]:
        if self.forget is None:
            raise UserError(BIO_FORGET_HELP)
        return self.forget.texts(data)

    def retain_texts(self, data: DataSource) -> list[str]:
        return WIKITEXT.texts(data)

    def eval_sets(self, data: DataSource) -> list[EvalSet]:
        return [wmdp_set(self.target, data)] + [mmlu_set(s, data) for s in self.mmlu_subjects]

    def prompt_format(self) -> PromptFormat | None:
        return None  # the tokenizer's chat template gives the reference prompt on Gemma

    def hub_datasets(self) -> list[HubDataset]:
        """Everything this case reads from the hub (for ``dsg data mirror``)."""
        corpora = [WIKITEXT] + ([self.forget] if self.forget else [])
        return corpora + [wmdp_dataset(self.target)] + [mmlu_dataset(s) for s in self.mmlu_subjects]


BIO = WMDPCase(
    name="bio",
    description="WMDP-bio: forget hazardous biology (gated forget corpus: --forget-corpus)",
    defaults=CaseDefaults(
        model=MODEL,
        sae=SAE,
        ratio_percentiles=(95.0,),
        n_features=(20, 50, 100, 200),
        multipliers=(500.0,),
        seq_len=1024,
        dataset_size=1024,
    ),
    target="wmdp-bio",
    mmlu_subjects=(COMMON_MMLU[0], "college_computer_science", *COMMON_MMLU[1:]),
    forget=None,
)

CYBER = WMDPCase(
    name="cyber",
    description="WMDP-cyber: forget hazardous cyber-security knowledge",
    defaults=CaseDefaults(
        model=MODEL,
        sae=SAE,
        ratio_percentiles=(90.0,),
        n_features=(30,),
        multipliers=(500.0,),
        seq_len=1024,
        dataset_size=1024,
    ),
    target="wmdp-cyber",
    mmlu_subjects=(COMMON_MMLU[0], "college_biology", *COMMON_MMLU[1:]),
    forget=CYBER_FORGET,
)
