# Final test accuracy with a 95% interval, in the batch-norm modes of grid.eval_modes.
# benchmark: wall time and peak memory of the job (results/<preset>/benchmarks/evaluate/<run>.tsv).


rule evaluate:
    input:
        done=run_file_for("DONE", "eval.json"),
        data=prepared_for("eval.json"),
    output:
        f"{RUN_DIR}/eval.json",
    params:
        run_dir=parent_of_output,
        data_dir=data_dir_of,
        flags=eval_flags,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/evaluate/{RUN_NAME}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{RUN_NAME}.tsv"
    threads: resource("evaluate", "threads")
    resources:
        gpu=resource("evaluate", "gpu"),
        mem_mb=resource("evaluate", "mem_mb"),
        runtime=resource("evaluate", "runtime"),
    shell:
        "TF_NUM_INTRAOP_THREADS={threads} reptile-tf evaluate {params.run_dir} --data-dir {params.data_dir} {params.flags} --no-progress > {log} 2>&1"
