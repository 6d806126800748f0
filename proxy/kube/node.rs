//! A JSON-shaped tree whose maps keep their keys in the order they came, so that a document
//! written back reads like the one read (serde_json's maps sort their keys, and turning on its
//! `preserve_order` would change every JSON sidekey writes elsewhere).

use serde_json::{Number, Value};

#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Seq(Vec<Node>),
    Map(Map),
}

/// Keys in insertion order; a key inserted again replaces the value in place.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Map(pub Vec<(String, Node)>);

impl Map {
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn insert(&mut self, key: &str, value: Node) {
        match self.get_mut(key) {
            Some(v) => *v = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }

    /// The map under `key`, made (appended) when missing or null. None when it is not a map.
    pub fn map_mut(&mut self, key: &str) -> Option<&mut Map> {
        if matches!(self.get(key), None | Some(Node::Null)) {
            self.insert(key, Node::Map(Map::default()));
        }
        match self.get_mut(key) {
            Some(Node::Map(m)) => Some(m),
            _ => None,
        }
    }

    /// The sequence under `key`, made (appended) when missing or null. None when it is not one.
    pub fn seq_mut(&mut self, key: &str) -> Option<&mut Vec<Node>> {
        if matches!(self.get(key), None | Some(Node::Null)) {
            self.insert(key, Node::Seq(Vec::new()));
        }
        match self.get_mut(key) {
            Some(Node::Seq(s)) => Some(s),
            _ => None,
        }
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Node::String(s)) => Some(s),
            _ => None,
        }
    }
}

impl Node {
    pub fn str(s: &str) -> Node {
        Node::String(s.to_owned())
    }

    pub fn as_map(&self) -> Option<&Map> {
        match self {
            Node::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_map_mut(&mut self) -> Option<&mut Map> {
        match self {
            Node::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::String(s) => Some(s),
            _ => None,
        }
    }
}

impl From<&Value> for Node {
    fn from(v: &Value) -> Node {
        match v {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => Node::Number(n.clone()),
            Value::String(s) => Node::String(s.clone()),
            Value::Array(a) => Node::Seq(a.iter().map(Node::from).collect()),
            Value::Object(o) => Node::Map(Map(o.iter().map(|(k, v)| (k.clone(), Node::from(v))).collect())),
        }
    }
}

impl From<&Node> for Value {
    fn from(n: &Node) -> Value {
        match n {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Number(n) => Value::Number(n.clone()),
            Node::String(s) => Value::String(s.clone()),
            Node::Seq(s) => Value::Array(s.iter().map(Value::from).collect()),
            Node::Map(m) => Value::Object(m.0.iter().map(|(k, v)| (k.clone(), Value::from(v))).collect()),
        }
    }
}
