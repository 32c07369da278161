# Meta-training: one job per (setting, algorithm, seed); the run directory is the unit of
# reproducibility (config.json, checkpoints/, metrics.jsonl, DONE). An interrupted job resumes
# from its last checkpoint when re-run. TensorFlow's intra-op pool gets the job's `threads`, so
# parallel jobs do not oversubscribe the cores; one inter-op thread, because concurrent
# independent ops made MAML's second-order step non-deterministic on CPU (measured: two
# identical 8-iteration runs differed from iteration 4 on; with 1 inter-op thread they agree).
# benchmark: Snakemake's wall time and peak memory of the job (s, max_rss, ...), one TSV per run, under
# results/<preset>/benchmarks/<rule>/ (the wall-time and memory figures quoted in READMEs).


rule train:
    input:
        prepared_for("DONE"),
    output:
        f"{RUN_DIR}/DONE",
    params:
        run_dir=parent_of_output,
        data_dir=data_dir_of,
        flags=train_flags,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/train/{RUN_NAME}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{RUN_NAME}.tsv"
    threads: resource("train", "threads", 2)
    resources:
        gpu=resource("train", "gpu", 0),
        mem_mb=resource("train", "mem_mb", 8000),
        runtime=resource("train", "runtime", 60),
    shell:
        "TF_NUM_INTRAOP_THREADS={threads} TF_NUM_INTEROP_THREADS=1 reptile-tf train --algorithm {wildcards.algorithm} --dataset {wildcards.dataset}"
        " --ways {wildcards.ways} --shots {wildcards.shots} --seed {wildcards.seed}"
        " --out {params.run_dir} --data-dir {params.data_dir} {params.flags} --no-progress > {log} 2>&1"
