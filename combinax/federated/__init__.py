"""combinax.federated: FedAvg / FedSGD / server optimizers (FedAvgM, FedAdam) over simulated clients (vmap, sequential,
or a `clients` mesh axis), client splits (IID, Dirichlet, pathological), a resumable runner (`combinax-federated`,
`FederatedRun`) and a Flower adapter (`combinax.federated.flower`: `pip install 'combinax[federated]'`; nothing here
imports flwr). Its gin configurables (`FederatedRun`, `FedAvgOptions`, `split_clients`, `image_examples`) are
registered where they are defined, when this package is imported."""

from combinax.federated.fedavg import (CLIENTS, EXECUTIONS, FedAvg, FedAvgOptions, FederatedError, ServerState,
                                       client_mesh, fedsgd_options, round_keys, weighted_sum)
from combinax.federated.splits import (SCHEMES, ClientData, SplitError, image_examples, pack_clients, read_examples,
                                       split_clients, split_dirichlet, split_iid, split_pathological)
from combinax.federated.run import Evaluator, FederatedRun, client_data  # noqa: E402  (needs the two above)
