process SEGMENT {
    tag "${meta.id}"
    label 'process_low'
    label 'process_gpu'

    input:
    tuple val(meta), path(slide)
    path(model_dir, stageAs: 'atlaspatch_models/*')        // weights directory (DIR/<model>/<file>), or [] for none
    path(mpp_csv)

    output:
    tuple val(meta), path("patches/${meta.id}.h5"), emit: h5
    path "versions.yml"                          , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args   = task.ext.args ?: ''
    def models = model_dir ? "--model-dir '${model_dir}'" : ''
    def mpp    = mpp_csv ? "--mpp-csv '${mpp_csv}'" : ''
    """
    atlaspatch segment '${slide}' \\
        --output . \\
        ${models} \\
        ${mpp} \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        atlaspatch: \$(atlaspatch --version | sed 's/^atlaspatch //')
    END_VERSIONS
    """

    stub:
    """
    mkdir -p patches
    touch 'patches/${meta.id}.h5'

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        atlaspatch: \$(atlaspatch --version | sed 's/^atlaspatch //')
    END_VERSIONS
    """
}
