"""``lra_cross_entropy``: cross-entropy of a sequence classifier, with its accuracy.

Usable with ``--best-checkpoint-metric accuracy --maximize-best-checkpoint-metric``.
"""
import math
from dataclasses import dataclass

import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from omegaconf import II


@dataclass
class LRACrossEntropyConfig(FairseqDataclass):
    sentence_avg: bool = II("optimization.sentence_avg")


@register_criterion("lra_cross_entropy", dataclass=LRACrossEntropyConfig)
class LRACrossEntropyCriterion(FairseqCriterion):
    """Summed cross-entropy of the logits (B, classes) against ``target`` (B,); the gradient is
    normalized by the number of examples (``--sentence-avg``, as the original recipes) or of tokens."""

    def __init__(self, task, sentence_avg: bool):
        super().__init__(task)
        self.sentence_avg = sentence_avg

    def forward(self, model, sample, reduce: bool = True):
        logits = model(**sample["net_input"]).float()
        target = sample["target"].view(-1)
        loss = F.cross_entropy(logits, target, reduction="sum" if reduce else "none")
        ncorrect = (logits.argmax(dim=-1) == target).sum()
        sample_size = target.numel() if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "ncorrect": ncorrect.data,
            "ntokens": sample["ntokens"],
            "nsentences": target.numel(),
            "sample_size": sample_size,
        }
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        loss = sum(log.get("loss", 0) for log in logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        nsentences = sum(log.get("nsentences", 0) for log in logging_outputs)
        ncorrect = sum(log.get("ncorrect", 0) for log in logging_outputs)
        metrics.log_scalar("loss", loss / max(sample_size, 1) / math.log(2), sample_size, round=3)
        metrics.log_scalar("accuracy", 100.0 * ncorrect / max(nsentences, 1), nsentences, round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
