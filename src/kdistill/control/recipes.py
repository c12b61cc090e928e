"""Named recipes: the values of params.yaml that reproduce a published setting, for ``kdistill recipe``.

``crd``: the CIFAR-100 benchmark of CRD (Tian, Krishnan & Isola, ICLR 2020), as RepDistiller and
mdistiller train it: SGD (lr 0.05, 0.01 for MobileNetV2 and ShuffleNet students; momentum 0.9;
weight decay 5e-4), batch 64, 240 epochs, the rate ×0.1 after epochs 150, 180 and 210, random crop
plus flip; KD at T=4 with weights 0.9 (KD) and 0.1 (CE); DKD at T=4 with alpha 1, the per-pair
beta of mdistiller's ``configs/cifar100/dkd/`` (8 where a pair has none) and its 20 warm-up epochs.
The other methods keep their own sections: their published CIFAR settings are what params.yaml
already holds, or (cosine, the hint regressor) the tutorial's.
"""

from __future__ import annotations

import json
from typing import Any

from kdistill.core.catalog import LOW_LR_FAMILIES, NETWORKS
from kdistill.errors import ConfigError

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
# RepDistiller's and mdistiller's normalization for CIFAR-100.
CIFAR100_MEAN, CIFAR100_STD = [0.5071, 0.4867, 0.4408], [0.2675, 0.2565, 0.2761]
DKD_BETA = {  # mdistiller configs/cifar100/dkd/<teacher>_<student>.yaml, DKD.BETA; default 8
    ("resnet56", "resnet20"): 2.0, ("resnet110", "resnet32"): 2.0, ("vgg13", "vgg8"): 6.0,
    ("vgg13", "mobile_half"): 6.0, ("wrn_40_2", "wrn_16_2"): 6.0, ("wrn_40_2", "wrn_40_1"): 6.0,
}
DKD_DEFAULT_BETA = 8.0


def crd(teacher: str, student: str) -> dict[str, Any]:
    for role, name in (("teacher", teacher), ("student", student)):
        if name not in NETWORKS:
            raise ConfigError(f"--{role} {name!r}: unknown network; known: {', '.join(NETWORKS)}")
    low_lr = NETWORKS[student].family in LOW_LR_FAMILIES
    return {
        "data.url": CIFAR100_URL, "data.md5": CIFAR100_MD5, "data.format": "cifar100",
        "data.mean": CIFAR100_MEAN, "data.std": CIFAR100_STD,
        "networks.teacher": teacher, "networks.student": student,
        "train.epochs": 240, "train.batch_size": 64, "train.optimizer": "sgd", "train.lr": 0.01 if low_lr else 0.05,
        "train.momentum": 0.9, "train.nesterov": False, "train.weight_decay": 5e-4, "train.schedule": "multistep",
        "train.milestones": [150, 180, 210], "train.lr_decay": 0.1, "train.augment": "crop_flip",
        "distill_kd.T": 4.0, "distill_kd.soft_target_loss_weight": 0.9, "distill_kd.ce_loss_weight": 0.1,
        "distill_dkd.T": 4.0, "distill_dkd.alpha": 1.0, "distill_dkd.beta": DKD_BETA.get((teacher, student),
                                                                                        DKD_DEFAULT_BETA),
        "distill_dkd.ce_loss_weight": 1.0, "distill_dkd.warmup_epochs": 20.0,
    }


RECIPES = {"crd": crd}


def assignments(values: dict[str, Any]) -> list[str]:
    """``key=value`` with JSON values (valid YAML), as ``kdistill set`` and ``dvc exp run -S`` take them."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]
