/*
 * ATLASPATCH: the per-slide stage chain. Each stage is one process per slide (meta.id = slide stem) that
 * calls one `atlaspatch` stage command, reads the previous stage's H5 and writes a new one (copy-on-write).
 *     SEGMENT -> TILE [-> EMBED_PATCHES, with --patch_encoders or --slide_encoders] [-> ENCODE_SLIDE, with
 *     --slide_encoders]
 * Only the last stage's H5 is published (conf/modules.config). EMBED_PATCHES computes the patch features the
 * slide encoders consume (resolved by the tool itself, from the same registry as `atlaspatch encode-slide`).
 */

include { SEGMENT       } from '../modules/local/segment/main'
include { TILE          } from '../modules/local/tile/main'
include { EMBED_PATCHES } from '../modules/local/embed_patches/main'
include { ENCODE_SLIDE  } from '../modules/local/encode_slide/main'

workflow ATLASPATCH {

    take:
    ch_slides   // channel: [ val(meta), path(slide) ]   (a slide file or a DICOM series folder)
    ch_previous // channel: [ val(meta), path(h5) or [] ] the H5 an earlier run published for the slide, to reuse
    mpp_csv     // value:   path(csv) or [] (no --mpp-csv)
    model_dir   // value:   path(dir) or [] (no --model_dir): weights for SEGMENT/EMBED_PATCHES/ENCODE_SLIDE
    plugins     // value:   [ path(py), ... ] or [] (no --feature_plugin): files registering patch encoders

    main:
    SEGMENT ( ch_slides.join(ch_previous), model_dir, mpp_csv )
    TILE    ( ch_slides.join(SEGMENT.out.h5), mpp_csv )

    ch_h5 = TILE.out.h5

    ch_versions = channel.empty()
        .mix(SEGMENT.out.versions.first())
        .mix(TILE.out.versions.first())

    // Stage 3, with --patch_encoders or --slide_encoders: features/<encoder> for every patch
    if( params.patch_encoders || params.slide_encoders ) {
        EMBED_PATCHES ( ch_slides.join(ch_h5), model_dir, plugins, mpp_csv )
        ch_h5       = EMBED_PATCHES.out.h5
        ch_versions = ch_versions.mix(EMBED_PATCHES.out.versions.first())
    }

    // Stage 4, only with --slide_encoders: slide_features/<encoder> from the patch features
    if( params.slide_encoders ) {
        ENCODE_SLIDE ( ch_h5, model_dir, plugins )
        ch_h5       = ENCODE_SLIDE.out.h5
        ch_versions = ch_versions.mix(ENCODE_SLIDE.out.versions.first())
    }

    emit:
    h5            = ch_h5                 // channel: [ val(meta), path(h5) ] the last stage's per-slide H5
    images        = TILE.out.images       // channel: [ val(meta), path(images/<stem>) ]
    visualization = TILE.out.visualization
    versions      = ch_versions           // channel: [ path(versions.yml) ] one per stage that ran
}
