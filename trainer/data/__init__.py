"""Face crops, from videos to training batches.

    prepare       `trainer prepare`: videos (FaceForensics++ layout) or pairs.csv → a face-crop
                  dataset DIR/{train,validation,test}/{real,fake}/, split by identity
    sources       prepare's inputs (videos, images, pairs.csv) and their identity groups and splits
    extraction    prepare's faces: sampled frames, detected and cropped as `forensic scan` does
    prepared_folder  the folder prepare writes: prepare.json, .done records, atomic writes
    datasets      that folder layout: listing a split, datasets and transforms of crops
    pairing       batches holding each fake beside its own real (`trainer fit --paired`)
    training_set  the dataset `trainer fit` draws from: augmented crops, self-blends, partners
    sbi           self-blended fakes made from real crops (`--sbi`)
    augment       the `uploads` augmentation recipe
    corruptions   corruptions for `trainer eval` (and the re-encodings `augment` uses)
    synthetic     data the project makes itself (`trainer synth`, tests, the demo)

Import the module you need; this package imports nothing.
"""
