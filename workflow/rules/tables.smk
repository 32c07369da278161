# Paper-shaped tables (Markdown + CSV, ours vs published) and learning curves for the preset; both
# appear in `snakemake --report report.html` with the captions in workflow/report/.


rule tables:
    input:
        run_files("eval.json"),
    output:
        [report(path, caption="../report/tables.rst", category="Tables") for path in table_outputs()
         if not path.endswith(".png")],
        [report(path, caption="../report/learning_curves.rst", category="Learning curves")
         for path in table_outputs() if path.endswith(".png")],
    params:
        runs=lambda wildcards: RUNS,
        out=parent_of_output,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/tables.log",
    threads: resource("tables", "threads")
    resources:
        mem_mb=resource("tables", "mem_mb"),
        runtime=resource("tables", "runtime"),
    shell:
        "reptile-tf tables --runs {params.runs} --out {params.out} > {log} 2>&1"
