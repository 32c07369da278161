# Throughput benchmarks against the measured matmul peak (quick mode).


rule bench:
    output:
        directory(f"{config['results_dir']}/benchmarks"),
    conda:
        CONDA_ENV
    log:
        f"{config['logs_dir']}/bench.log",
    threads: resource("bench", "threads", 2)
    resources:
        mem_mb=resource("bench", "mem_mb", 4000),
        runtime=resource("bench", "runtime", 30),
    shell:
        "reptile-tf bench --quick --out {output} > {log} 2>&1"
