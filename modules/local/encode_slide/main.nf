process ENCODE_SLIDE {
    tag "${meta.id}"
    label 'process_low'
    label 'process_gpu'

    input:
    tuple val(meta), path(h5, stageAs: 'input/*')
    path(model_dir, stageAs: 'atlaspatch_models/*')        // weights directory (DIR/<model>/<file>), or [] for none
    path(plugins  , stageAs: 'atlaspatch_plugins*/*')      // --feature-plugin files (for mean-<plugin encoder>), or []

    output:
    tuple val(meta), path("patches/${meta.id}.h5"), emit: h5
    path "versions.yml"                          , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    // The staged input H5 (input/<stem>.h5) is never modified: the tool writes a new
    // patches/<stem>.h5 that starts as a copy of it plus slide_features/<encoder> (copy-on-write between stages).
    def args   = task.ext.args ?: ''
    def models = model_dir ? "--model-dir ${model_dir}" : ''
    def plugin = [plugins].flatten().collect { p -> "--feature-plugin ${p}" }.join(' ')
    """
    atlaspatch embed-slide \\
        --h5 ${h5} \\
        --output . \\
        ${models} \\
        ${plugin} \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        atlaspatch: \$(atlaspatch --version | sed 's/^atlaspatch //')
    END_VERSIONS
    """

    stub:
    """
    mkdir -p patches
    touch ${ShellWords.quote("patches/${meta.id}.h5")}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        atlaspatch: \$(atlaspatch --version | sed 's/^atlaspatch //')
    END_VERSIONS
    """
}
