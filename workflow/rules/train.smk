# Meta-training: one job per (setting, algorithm, seed), or per (setting, algorithm) for a seed group (below); the run directory is the unit of
# reproducibility (config.json, checkpoints/, metrics.jsonl, DONE). An interrupted job resumes
# from its last checkpoint when re-run. TensorFlow's intra-op pool gets the job's `threads`, so
# parallel jobs do not oversubscribe the cores (the one inter-op thread that keeps MAML
# deterministic is the package's own default: reptile_tf/__init__.py).
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
        algorithm=trained_algorithm,
        flags=train_flags,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/train/{RUN_NAME}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{RUN_NAME}.tsv"
    threads: train_threads
    resources:
        gpu=resource("train", "gpu"),
        mem_mb=resource("train", "mem_mb"),
        runtime=resource("train", "runtime"),
    shell:
        "TF_NUM_INTRAOP_THREADS={threads} reptile-tf train --algorithm {params.algorithm} --dataset {wildcards.dataset}"
        " --ways {wildcards.ways} --shots {wildcards.shots} --seed {wildcards.seed}"
        " --out {params.run_dir} --data-dir {params.data_dir} {params.flags} --no-progress > {log} 2>&1"


# The seeds of a setting's Reptile/FOMAML runs in one job (train.seed_groups; `SEED_GROUP_ALGORITHMS`
# in common.smk): the same run directories, trained together in one compiled call per meta-iteration.
ruleorder: train_seed_group > train


rule train_seed_group:
    input:
        prepared_for("DONE"),
    output:
        expand(f"{RUN_DIR}/DONE", seed=SEEDS, allow_missing=True),
    wildcard_constraints:
        algorithm="|".join(SEED_GROUP_ALGORITHMS) or "(?!)",
    params:
        out=seed_group_out,
        seeds=",".join(str(seed) for seed in SEEDS),
        data_dir=data_dir_of,
        algorithm=trained_algorithm,
        flags=train_flags,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/train/{SEED_GROUP_NAME}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{SEED_GROUP_NAME}.tsv"
    threads: resource("train", "threads")
    resources:
        gpu=resource("train", "gpu"),
        mem_mb=resource("train", "mem_mb"),
        runtime=resource("train", "runtime"),
    shell:
        "TF_NUM_INTRAOP_THREADS={threads} reptile-tf train --algorithm {params.algorithm} --dataset {wildcards.dataset}"
        " --ways {wildcards.ways} --shots {wildcards.shots} --seeds {params.seeds}"
        " --out '{params.out}' --data-dir {params.data_dir} {params.flags} --no-progress > {log} 2>&1"
