process TILE {
    tag "${meta.id}"
    label 'process_low'

    input:
    tuple val(meta), path(slide, stageAs: 'slide/*'), path(h5, stageAs: 'input/*')
    path(mpp_csv, stageAs: 'mpp_csv/*')                    // --mpp_csv, or []

    output:
    tuple val(meta), path("patches/${meta.id}.h5")     , emit: h5
    tuple val(meta), path("images/${meta.id}")         , emit: images       , optional: true
    tuple val(meta), path("visualization/*")           , emit: visualization, optional: true
    path "versions.yml"                                , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    // The slide is staged under slide/ (no name of a slide's can clash with patches/ or start an option) and the tool
    // reads it through wsi/<id><suffix>, so that the H5 is patches/<id>.h5 (a samplesheet id may differ from the
    // file's stem). Staged paths go into the script unquoted: Nextflow escapes them. A samplesheet mpp overrides the
    // slide's.
    def name   = slide.name.substring(slide.name.lastIndexOf('/') + 1)   // the staged name is slide/<file>
    def suffix = name.lastIndexOf('.') > 0 ? name.substring(name.lastIndexOf('.')) : ''
    def mppArg = meta.mpp ? "--mpp ${meta.mpp}" : ''
    // The staged input H5 (input/<stem>.h5) is never modified: the tool writes a new
    // patches/<stem>.h5 that starts as a copy of it (copy-on-write between stages).
    def args = task.ext.args ?: ''
    def mpp  = mpp_csv ? "--mpp-csv ${mpp_csv}" : ''
    """
    mkdir -p wsi
    if [ -d ${slide} ]; then wsi=${ShellWords.quote("wsi/${meta.id}")}; else wsi=${ShellWords.quote("wsi/${meta.id}${suffix}")}; fi
    ln -s ../${slide} "\$wsi"
    atlaspatch tile "\$wsi" \\
        --h5 ${h5} \\
        --output . \\
        ${mpp} \\
        ${mppArg} \\
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
