# MLflow mirrors the run directories: the store and experiment are created once (track_init),
# then every finished run is logged idempotently (re-running updates the same MLflow run): its
# training times, metrics in percent, dataset inputs, artifacts and the model in MLflow's format,
# and the parent run of its setting (mean over the seeds tracked so far). Track jobs of one store
# take turns (a file lock beside the SQLite file). Browse the store with `make ui`.


rule track_init:
    output:
        f"{MLFLOW_DIR}/{PRESET}.experiment.json",
    params:
        uri=TRACKING_URI,
        experiment=PRESET,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/track/init.log",
    threads: resource("track", "threads")
    resources:
        mem_mb=resource("track", "mem_mb"),
        runtime=resource("track", "runtime"),
    shell:
        "reptile-tf track --init --experiment {params.experiment} --tracking-uri {params.uri}"
        " --marker {output} > {log} 2>&1"


rule track:
    input:
        init=f"{MLFLOW_DIR}/{PRESET}.experiment.json",
        done=f"{RUN_DIR}/DONE",
        evaluation=f"{RUN_DIR}/eval.json",
    output:
        f"{RUN_DIR}/mlflow.json",
    params:
        run_dir=parent_of_output,
        uri=TRACKING_URI,
        experiment=PRESET,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/track/{RUN_NAME}.log",
    threads: resource("track", "threads")
    resources:
        mem_mb=resource("track", "mem_mb"),
        runtime=resource("track", "runtime"),
    shell:
        "reptile-tf track {params.run_dir} --experiment {params.experiment} --tracking-uri {params.uri}"
        " --marker {output} > {log} 2>&1"
