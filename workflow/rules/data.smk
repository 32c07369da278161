# Raw files (verified against checksums / tree digests) and the TFDS datasets built from them.


rule fetch:
    output:
        f"{RAW}/{{dataset}}/VERIFIED.json",
    params:
        dest=parent_of_output,
        flags=fetch_flags,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/fetch/{{dataset}}.log",
    threads: resource("fetch", "threads")
    resources:
        mem_mb=resource("fetch", "mem_mb"),
        runtime=resource("fetch", "runtime"),
    shell:
        "reptile-tf fetch {wildcards.dataset} --dest {params.dest} {params.flags} --no-progress > {log} 2>&1"


rule prepare:
    input:
        f"{RAW}/{{dataset}}/VERIFIED.json",
    output:
        directory(f"{TFDS}{{variant}}/{{dataset}}"),
    wildcard_constraints:
        variant="|_nearest",
    params:
        raw=parent_of_input,
        data_dir=parent_of_output,
        flags=prepare_flags,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/prepare/{{dataset}}{{variant}}.log",
    threads: resource("prepare", "threads")
    resources:
        mem_mb=resource("prepare", "mem_mb"),
        runtime=resource("prepare", "runtime"),
    shell:
        "reptile-tf prepare {wildcards.dataset} --raw {params.raw} --data-dir {params.data_dir} {params.flags} > {log} 2>&1"
