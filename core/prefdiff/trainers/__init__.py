"""One LightningModule per family of alignment methods.

``METHODS`` maps every method name of the contract (the keys of results.json
and of ``prefdiff bench --method``) to the module that trains it and the
options that select the variant. Each module says what data it trains on
(:meth:`AlignmentModule.training_data`), so callers never branch on names.
"""

from prefdiff.trainers.base import AlignmentModule, TrainingData
from prefdiff.trainers.pairs import PairModule
from prefdiff.trainers.online_pairs import D3POModule
from prefdiff.trainers.policy_gradient import PolicyGradientModule
from prefdiff.trainers.reward_backprop import RewardBackpropModule
from prefdiff.trainers.sft import SFTModule

#: method name -> (module class, fixed options). Contract: keys of results.json.
METHODS = {
    "sft": (SFTModule, {}),
    "rwr": (SFTModule, {"reward_weighted": True}),
    "dpo": (PairModule, {"objective": "dpo"}),
    "kto": (PairModule, {"objective": "kto"}),
    "d3po": (D3POModule, {}),
    "ddpo": (PolicyGradientModule, {"method": "ddpo"}),
    "dpok": (PolicyGradientModule, {"method": "dpok"}),
    "grpo": (PolicyGradientModule, {"method": "grpo"}),
    "draft": (RewardBackpropModule, {"method": "draft"}),
    "alignprop": (RewardBackpropModule, {"method": "alignprop"}),
    "refl": (RewardBackpropModule, {"method": "refl"}),
}

__all__ = ["AlignmentModule", "SFTModule", "PairModule", "D3POModule", "PolicyGradientModule",
           "RewardBackpropModule", "METHODS", "TrainingData"]
