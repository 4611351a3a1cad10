process TILE {
    tag "${meta.id}"
    label 'process_low'

    input:
    tuple val(meta), path(slide), path(h5)
    path(mpp_csv)

    output:
    tuple val(meta), path("patches/${meta.id}.h5")     , emit: h5
    tuple val(meta), path("images/${meta.id}")         , emit: images       , optional: true
    tuple val(meta), path("visualization/*")           , emit: visualization, optional: true
    path "versions.yml"                                , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    // The staged input H5 (<stem>.h5 at the task root) is never modified: the tool writes a new
    // patches/<stem>.h5 that starts as a copy of it (copy-on-write between stages).
    def args = task.ext.args ?: ''
    def mpp  = mpp_csv ? "--mpp-csv '${mpp_csv}'" : ''
    """
    atlaspatch tile '${slide}' \\
        --h5 '${h5}' \\
        --output . \\
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
