# Numerical checks of the paper's theory (section 5 expansions, section 6.2 experiment on
# Omniglot, hence the prepared Omniglot input). The plots go into `snakemake --report`; the job's
# wall time and peak memory into results/<preset>/benchmarks/theory.tsv (the preset sets the budget).
# The curves checkpoint under runs/<preset>/theory_combinations/ as they train (paper_cpu: committed
# with the runs, benchmarks/snapshot_runs.sh), so the job resumes on any machine.


rule theory:
    input:
        # the preset's Omniglot (paper presets: the official code's NEAREST images, as section 6.2 used)
        ancient_once_made(f"{tfds_root('omniglot')}/omniglot", [THEORY_OUT]),
    output:
        report(
            directory(THEORY_OUT),
            patterns=["{name}.png"],
            caption="../report/theory.rst",
            category="Theory",
        ),
    params:
        budget=config["theory"]["budget"],
        data_dir=parent_of_input,
        # Outside the output directory, which Snakemake clears around a failed job: an interrupted
        # job resumes its gradient-combination curves from here (hours at the paper budget).
        state=f"{RUNS}/theory_combinations",
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/theory.log",
    benchmark:
        f"{RESULTS}/benchmarks/theory.tsv"
    threads: resource("theory", "threads")
    resources:
        mem_mb=resource("theory", "mem_mb"),
        runtime=resource("theory", "runtime"),
    shell:
        "TF_NUM_INTRAOP_THREADS={threads} reptile-tf theory --budget {params.budget} --data-dir {params.data_dir} --state {params.state} --out {output} > {log} 2>&1"
