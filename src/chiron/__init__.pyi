# Types of the names `chiron/__init__.py` exports; the SDK's load on first use there.
from chiron.client.sdk import ClassMetrics as ClassMetrics
from chiron.client.sdk import Connection as Connection
from chiron.client.sdk import Evaluation as Evaluation
from chiron.client.sdk import Model as Model
from chiron.client.sdk import Prediction as Prediction
from chiron.client.sdk import Predictions as Predictions
from chiron.client.sdk import TrainingRun as TrainingRun
from chiron.client.sdk import connect as connect
from chiron.core.errors import AccessDenied as AccessDenied
from chiron.core.errors import AttestationError as AttestationError
from chiron.core.errors import ChironError as ChironError
from chiron.core.errors import Conflict as Conflict
from chiron.core.errors import EnclaveError as EnclaveError
from chiron.core.errors import InputError as InputError
from chiron.core.errors import IntegrityError as IntegrityError
from chiron.core.errors import JobFailed as JobFailed
from chiron.core.errors import KeyFileError as KeyFileError
from chiron.core.errors import NotFound as NotFound
from chiron.core.errors import PeerFailure as PeerFailure
from chiron.core.errors import PolicyError as PolicyError
from chiron.core.errors import ServiceError as ServiceError
from chiron.core.errors import UsageError as UsageError

__version__: str
__all__: list[str]
