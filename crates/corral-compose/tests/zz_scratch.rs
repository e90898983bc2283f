use corral_compose::*;
#[test]
fn scratch() {
    for m in ["0440", "0o440", "440", "'0440'", "0x1ff", "0999", "08"] {
        let text = format!("services:\n  web:\n    image: x\n    labels:\n      a: {m}\n");
        let r = load(&Input { files: vec![SourceFile::new("a.yaml", text)], project_name: Some("p".into()), ..Input::default() });
        match r { Ok(l) => println!("{m} => {:?}", l.project.services["web"].labels), Err(e) => println!("{m} => ERR {e}") }
    }
}
