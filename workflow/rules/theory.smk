# Numerical checks of the paper's theory (section 5 expansions, section 6.2 experiment on
# Omniglot, hence the prepared Omniglot input).


rule theory:
    input:
        f"{TFDS}/omniglot",
    output:
        directory(f"{config['results_dir']}/theory"),
    params:
        budget=config["theory"]["budget"],
        data_dir=parent_of_input,
    conda:
        CONDA_ENV
    log:
        f"{config['logs_dir']}/theory.log",
    threads: resource("theory", "threads", 2)
    resources:
        mem_mb=resource("theory", "mem_mb", 4000),
        runtime=resource("theory", "runtime", 120),
    shell:
        "TF_NUM_INTRAOP_THREADS={threads} reptile-tf theory --budget {params.budget} --data-dir {params.data_dir} --out {output} > {log} 2>&1"
