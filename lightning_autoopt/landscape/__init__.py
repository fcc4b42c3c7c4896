"""Loss-landscape probes as pure functions (no Trainer): loss functional, HVPs, spectra and sharpness measures.

The loss of a model on a batch follows one contract, ``loss_fn(model, batch) -> scalar``
(:mod:`~lightning_autoopt.landscape.batch_loss`); by default it is picked from the model and the batch.

Example::

    from lightning_autoopt.landscape import compute_measure, list_measures, make_fixed_batches

    batches = make_fixed_batches(train_set, num_samples=512, batch_size=128, seed=0)
    for name in list_measures():
        print(name, compute_measure(name, model, batches, init_params=theta0))
"""

from lightning_autoopt.landscape.batch_loss import (
    BatchLayout,
    BatchLoss,
    ForwardLoss,
    MethodLoss,
    SupervisedLoss,
    TrainingStepLoss,
    batch_size,
    resolve_loss,
)
from lightning_autoopt.landscape.hvp import DenseOperator, HVPOperator
from lightning_autoopt.landscape.loss import LossFunctional, evaluation_mode, make_fixed_batches
from lightning_autoopt.landscape.measures import (
    eps_sharpness,
    fisher_rao,
    hessian_fro,
    hessian_top,
    hessian_trace,
    local_entropy,
    lpf,
    pac_bayes,
    shannon,
)
from lightning_autoopt.landscape.normalize import filter_normalized_copy, filter_scales, to_normalized_coordinates
from lightning_autoopt.landscape.registry import (
    MeasureInfo,
    check_measure_kwargs,
    compute_measure,
    get_measure,
    list_measures,
    needs_class_scores,
)
from lightning_autoopt.landscape.snapshot import ParamSnapshot
from lightning_autoopt.landscape.spectrum import (
    TraceEstimate,
    density_on_grid,
    frobenius_norm,
    hutchinson_trace,
    lanczos,
    power_iteration,
    rademacher,
    slq_density,
    top_eigenvalues,
    tridiagonal_eigenvalues,
)

__all__ = [
    "BatchLayout",
    "BatchLoss",
    "DenseOperator",
    "ForwardLoss",
    "HVPOperator",
    "LossFunctional",
    "MeasureInfo",
    "MethodLoss",
    "ParamSnapshot",
    "SupervisedLoss",
    "TraceEstimate",
    "TrainingStepLoss",
    "batch_size",
    "check_measure_kwargs",
    "compute_measure",
    "density_on_grid",
    "eps_sharpness",
    "evaluation_mode",
    "filter_normalized_copy",
    "filter_scales",
    "fisher_rao",
    "frobenius_norm",
    "get_measure",
    "hessian_fro",
    "hessian_top",
    "hessian_trace",
    "hutchinson_trace",
    "lanczos",
    "list_measures",
    "local_entropy",
    "needs_class_scores",
    "lpf",
    "make_fixed_batches",
    "pac_bayes",
    "power_iteration",
    "rademacher",
    "resolve_loss",
    "shannon",
    "slq_density",
    "to_normalized_coordinates",
    "top_eigenvalues",
    "tridiagonal_eigenvalues",
]
