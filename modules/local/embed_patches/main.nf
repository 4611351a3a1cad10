process EMBED_PATCHES {
    tag "${meta.id}"
    label 'process_medium'
    label 'process_gpu'

    input:
    tuple val(meta), path(slide, stageAs: 'slide/*'), path(h5, stageAs: 'input/*')
    path(model_dir, stageAs: 'atlaspatch_models/*')        // weights directory (DIR/<model>/<file>), or [] for none
    path(plugins  , stageAs: 'atlaspatch_plugins*/*')      // --feature-plugin files, or [] for none
    path(mpp_csv  , stageAs: 'mpp_csv/*')                // --mpp_csv, or []

    output:
    tuple val(meta), path("patches/${meta.id}.h5"), emit: h5
    path "versions.yml"                          , emit: versions

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
    // patches/<stem>.h5 that starts as a copy of it plus features/<encoder> (copy-on-write between stages).
    // The model dir and plugin files are staged under their own folders, so no name of theirs can clash with the
    // slide, the input H5 or patches/. Each plugin file sits in a folder of its own (two may share a name).
    def args    = task.ext.args ?: ''
    def models  = model_dir ? "--model-dir ${model_dir}" : ''
    def plugin  = [plugins].flatten().collect { p -> "--feature-plugin ${p}" }.join(' ')
    def mpp     = mpp_csv ? "--mpp-csv ${mpp_csv}" : ''
    """
    mkdir -p wsi
    if [ -d ${slide} ]; then wsi=${ShellWords.quote("wsi/${meta.id}")}; else wsi=${ShellWords.quote("wsi/${meta.id}${suffix}")}; fi
    ln -s ../${slide} "\$wsi"
    atlaspatch embed-patches \\
        --slide "\$wsi" \\
        --h5 ${h5} \\
        --output . \\
        ${models} \\
        ${plugin} \\
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
