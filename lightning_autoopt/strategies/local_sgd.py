"""Local SGD: periodic parameter averaging, optionally hierarchical (group averages plus global averages).

References: Stich, "Local SGD Converges Fast and Communicates Little", ICLR 2019; Lin et al., "Don't Use Large
Mini-Batches, Use Local SGD", ICLR 2020 (post-local / hierarchical SGD). See ``docs/methods/local_sgd.md``.
"""

from __future__ import annotations

from typing import Any

from lightning_autoopt.strategies._checks import check_group_size, check_overlap, check_period
from lightning_autoopt.strategies._registry import register_strategy
from lightning_autoopt.strategies.local_update import LocalUpdateStrategy


class LocalSGDStrategy(LocalUpdateStrategy):
    """Every ``period`` optimizer steps all replicas are replaced by their average (one flat all-reduce).

    Hierarchical mode: with ``local_period`` and more than one group (``group_size``, default one group per node),
    replicas are also averaged inside their group every ``local_period`` steps. Unlike Lightning's built-in
    post-local SGD this works on CPU/gloo (no gradient all-reduce at all), and its counters survive resume. The
    average is over the finite replicas only; a non-finite one takes it (optimizer state cleared).

    Args:
        period: Optimizer steps between global averages. A huge value gives the "no communication" baseline.
        local_period: Optimizer steps between group averages; ``None`` disables them.
        group_size: Workers per group; ``None`` = devices per node.
        buffer_policy: See :class:`LocalUpdateStrategy`.
        eval_policy: ``"average"`` (default), ``"leader"`` (rank 0) or ``"local"``.
        consensus_every: See :class:`LocalUpdateStrategy` (free here: the mean is computed anyway; not logged with
            ``overlap=True``).
        overlap: Overlap each global average with the next ``period`` local steps: the average of the replicas at
            step ``t`` is launched asynchronously (on its own process group) and applied at step ``t + period`` as
            ``x <- x + (mean_t - x_t)``, so the link's time hides behind compute (Wang et al., "Overlap Local-SGD",
            2020). Costs two flat copies of the parameters; needs ``local_period=None``. Default ``False``: the
            synchronous rounds above.
        **kwargs: Forwarded to :class:`LocalUpdateStrategy` / ``DDPStrategy``.

    Raises:
        ValueError: If a period is < 1, ``group_size`` is < 1, or ``overlap=True`` with a ``local_period``.

    Example::

        trainer = Trainer(accelerator="cpu", devices=4, strategy=LocalSGDStrategy(period=8))
    """

    strategy_name = "localsgd"

    def __init__(
        self,
        period: int = 16,
        local_period: int | None = None,
        group_size: int | None = None,
        buffer_policy: str = "local",
        eval_policy: str = "average",
        consensus_every: int = 1,
        overlap: bool = False,
        **kwargs: Any,
    ) -> None:
        self.period = check_period("period", period)
        self.local_period = check_period("local_period", local_period, allow_none=True)
        self.group_size = check_group_size(group_size)
        self.overlap = check_overlap(overlap, local_period)
        super().__init__(
            buffer_policy=buffer_policy, eval_policy=eval_policy, consensus_every=consensus_every, **kwargs
        )

    def setup_round_state(self) -> None:
        self.setup_groups(self.group_size)
        if self.overlap:
            self.setup_overlap_group()

    def round_due(self, step: int) -> bool:
        return step % self.period == 0 or self.group_round_due(step, self.local_period)

    def on_round(self, step: int) -> None:
        if step % self.period == 0 and self.overlap:
            self.finish_rounds()
            self.launch_overlapped_mean(self.flat_params())
            self.average_buffers(None)
        elif step % self.period == 0:
            self._average(None, consensus=self.consensus_due())
        else:  # a group round (a global round already makes every group equal)
            self._average(self.group, consensus=False)

    def _average(self, group: Any, consensus: bool) -> None:
        flat = self.flat_params()
        mean = self.masked_mean(flat, group)  # of the finite replicas
        if mean is None:  # a group with no finite replica: the next global round heals it
            return
        if consensus:
            self.log_consensus(flat, mean)
        if self.replica_finite:
            self.write_params(mean)
        else:
            self.heal_(mean)
        self.average_buffers(group)

    def finish_rounds(self) -> None:
        done = self.take_overlapped_mean()
        if done is not None:
            self.apply_overlapped(*done)

    def validate_world_size(self, world_size: int) -> None:
        self.validate_group_size(self.group_size, world_size)


register_strategy(LocalSGDStrategy)
