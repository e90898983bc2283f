//! `load` never panics, whatever the text.

use corral_compose::{Input, SourceFile, load};
use proptest::prelude::*;

fn run(text: String) {
    let input = Input {
        files: vec![SourceFile::new("fuzz.yaml", text)],
        project_name: Some("fuzz".into()),
        ..Input::default()
    };
    let _ = load(&input);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        run(text);
    }

    #[test]
    fn yaml_like_text_never_panics(
        text in "(services:\n  [a-z]{1,3}:\n    |[a-z_]{1,8}: |[-:\\[\\]{}&*<$!|>'\"#, 0-9a-z]{0,12}\n|    - |  )+"
    ) {
        run(text);
    }

    #[test]
    fn interpolation_like_values_never_panic(value in "[$${}:?+\\-a-zA-Z_0-9 ]{0,24}") {
        run(format!("services:\n  web:\n    image: \"{value}\"\n    ports: [\"{value}\"]\n"));
    }
}
