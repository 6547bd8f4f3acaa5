"""The batch jobs' logic, one module per job: train, evaluate, retrieval (export, index,
batch top-k), finetune (task-head experiments), predict and ablate. A job reads its
inputs, calls the layers below (data, model, training, evaluation, heads, exports,
index, tracking) and writes its outputs; shared helpers live in those layers, never
in a job. ``recbert.cli`` and the scripts in ``pipelines/`` are the front doors."""
