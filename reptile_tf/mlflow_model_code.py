"""The pyfunc model's code as MLflow's "models from code" loads it (no pickled object).

`reptile_tf.mlflow_model.log_model` logs this file as the model's `python_model`; MLflow runs it
when the model is loaded (with the `reptile_tf` package stored beside it on sys.path). The model
itself, its input and output: `reptile_tf/mlflow_model.py`.
"""

import mlflow

from reptile_tf.mlflow_model import MetaLearnerModel

mlflow.models.set_model(MetaLearnerModel())
