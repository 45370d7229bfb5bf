//! Files published the way the kubelet updates a mounted Secret or ConfigMap.

use std::path::Path;

/// Writes `files` (name, content) into `dir` the way the kubelet publishes a volume: the files in
/// a timestamped directory `generation`, `..data` pointing at it, and each name a symlink through
/// `..data`. Swapping `..data` atomically replaces them all; a name the generation lacks is left
/// dangling (unreadable).
pub fn publish(dir: &Path, generation: &str, files: &[(&str, &str)]) {
    let data = dir.join(generation);
    std::fs::create_dir_all(&data).unwrap();
    for (name, content) in files {
        std::fs::write(data.join(name), content).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(generation, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link).unwrap();
        }
    }
}
